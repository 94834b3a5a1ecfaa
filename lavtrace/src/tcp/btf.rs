//! Checks the `struct sock_common` offsets the kprobe programs read
//! (`lavtrace_common::tcp::sock_offsets`) against the running kernel's BTF, and finds the
//! offsets of the byte counters in `struct tcp_sock` the destroy hook reads. Only what that
//! needs of the BTF format (include/uapi/linux/btf.h): the type section's records, walked to
//! find one struct's members, anonymous unions and structs included.

use std::collections::HashMap;

use anyhow::{Result, bail, ensure};
use lavtrace_common::tcp::sock_offsets as so;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// typedef, volatile, const, restrict: kinds 8 to 11, each standing for one other type.
const KIND_TYPEDEF: u32 = 8;
const KIND_RESTRICT: u32 = 11;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Btf<'a> {
    strings: &'a [u8],
    /// Struct and union types by id: (name offset, members).
    composites: HashMap<u32, (u32, Vec<Member>)>,
    /// Typedefs and qualifiers by id: the type they stand for.
    aliases: HashMap<u32, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let bytes = b
        .get(at..at + 4)
        .ok_or_else(|| anyhow::anyhow!("BTF truncated"))?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Btf<'a>> {
        ensure!(data.len() >= 24, "BTF too short");
        ensure!(
            u16::from_le_bytes([data[0], data[1]]) == BTF_MAGIC,
            "not little-endian BTF"
        );
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| anyhow::anyhow!("BTF type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| anyhow::anyhow!("BTF string section out of bounds"))?;
        let mut composites = HashMap::new();
        let mut aliases = HashMap::new();
        let (mut at, mut id) = (0usize, 1u32);
        while at < types.len() {
            let name = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kflag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, func_proto
                2 | 7..=12 | 16 | 18 => 0,    // ptr, fwd, typedef, qualifiers, func...
                other => bail!("unknown BTF kind {other}"),
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let base = at + 12 * m;
                    let offset = u32_at(types, base + 8)?;
                    members.push(Member {
                        name: u32_at(types, base)?,
                        ty: u32_at(types, base + 4)?,
                        bit_offset: if kflag { offset & 0xff_ffff } else { offset },
                    });
                }
                composites.insert(id, (name, members));
            } else if (KIND_TYPEDEF..=KIND_RESTRICT).contains(&kind) {
                aliases.insert(id, u32_at(types, at - 4)?);
            }
            at += extra;
            id += 1;
        }
        Ok(Btf {
            strings,
            composites,
            aliases,
        })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn struct_id(&self, name: &str) -> Option<u32> {
        self.composites
            .iter()
            .filter(|(_, (n, members))| self.name(*n) == name && !members.is_empty())
            .map(|(&id, _)| id)
            .min()
    }

    /// Byte offset of member `field` of composite `id`, looking into anonymous members.
    fn offset_of(&self, id: u32, field: &str) -> Option<usize> {
        self.member(id, field).map(|(at, _)| at)
    }

    /// Byte offset and type (typedefs and qualifiers resolved) of member `field` of
    /// composite `id`, looking into anonymous members.
    fn member(&self, id: u32, field: &str) -> Option<(usize, u32)> {
        let (_, members) = self.composites.get(&self.resolve(id))?;
        for m in members {
            if self.name(m.name) == field {
                return Some((m.bit_offset as usize / 8, self.resolve(m.ty)));
            }
            if m.name == 0
                && let Some((inner, ty)) = self.member(m.ty, field)
            {
                return Some((m.bit_offset as usize / 8 + inner, ty));
            }
        }
        None
    }

    /// Byte offset of `path` (a member, then a member of that member...) in struct `strukt`.
    fn path_offset(&self, strukt: &str, path: &[&str]) -> Result<usize> {
        let mut ty = self
            .struct_id(strukt)
            .ok_or_else(|| anyhow::anyhow!("no struct {strukt} in BTF"))?;
        let mut at = 0;
        for field in path {
            let (off, inner) = self
                .member(ty, field)
                .ok_or_else(|| anyhow::anyhow!("struct {strukt} has no {}", path.join(".")))?;
            at += off;
            ty = inner;
        }
        Ok(at)
    }

    fn resolve(&self, mut id: u32) -> u32 {
        // Bounded: a malformed BTF could make a cycle.
        for _ in 0..16 {
            match self.aliases.get(&id) {
                Some(&to) => id = to,
                None => break,
            }
        }
        id
    }
}

/// Ok when the kernel's `struct sock_common` has the fields where the programs read them.
pub fn check_sock_head(vmlinux: &[u8]) -> Result<()> {
    let btf = Btf::parse(vmlinux)?;
    let id = btf
        .struct_id("sock_common")
        .ok_or_else(|| anyhow::anyhow!("no struct sock_common in BTF"))?;
    for (field, want) in [
        ("skc_daddr", so::DADDR),
        ("skc_rcv_saddr", so::RCV_SADDR),
        ("skc_dport", so::DPORT),
        ("skc_num", so::NUM),
        ("skc_family", so::FAMILY),
        ("skc_state", so::STATE),
    ] {
        match btf.offset_of(id, field) {
            Some(at) if at == want => {}
            Some(at) => bail!("struct sock_common.{field} is at {at}, the programs read {want}"),
            None => bail!("struct sock_common has no {field}"),
        }
    }
    Ok(())
}

/// Byte offsets of `fields` in `struct strukt` of the BTF `vmlinux` (None: no such member),
/// for the sched family's task offsets.
pub fn member_offsets(vmlinux: &[u8], strukt: &str, fields: &[&str]) -> Result<Vec<Option<usize>>> {
    let btf = Btf::parse(vmlinux)?;
    let id = btf
        .struct_id(strukt)
        .ok_or_else(|| anyhow::anyhow!("no struct {strukt} in BTF"))?;
    Ok(fields.iter().map(|f| btf.offset_of(id, f)).collect())
}

/// Offsets of `bytes_acked`, `bytes_received` (u64 since 4.1/4.2, so 8-aligned) and
/// `total_retrans` (u32) in this kernel's `struct tcp_sock`; a misaligned one is refused
/// rather than read.
pub fn tcp_sock_counters(vmlinux: &[u8]) -> Result<SockCounters> {
    let btf = Btf::parse(vmlinux)?;
    let id = btf
        .struct_id("tcp_sock")
        .ok_or_else(|| anyhow::anyhow!("no struct tcp_sock in BTF"))?;
    let at = |field: &str, align: usize| -> Result<u32> {
        let off = btf
            .offset_of(id, field)
            .ok_or_else(|| anyhow::anyhow!("struct tcp_sock has no {field}"))?;
        ensure!(
            off != 0 && off % align == 0,
            "struct tcp_sock.{field} at {off} is not aligned for the hook's read"
        );
        Ok(u32::try_from(off)?)
    };
    Ok(SockCounters {
        bytes_acked: at("bytes_acked", 8)?,
        bytes_received: at("bytes_received", 8)?,
        total_retrans: at("total_retrans", 4)?,
    })
}

/// Offsets of `skc_v6_daddr` and `skc_v6_rcv_saddr` (16-byte addresses, 4-aligned) in this
/// kernel's `struct sock_common`, for the kprobe set's IPv6 addresses.
pub fn sock_v6_addrs(vmlinux: &[u8]) -> Result<SockV6> {
    let btf = Btf::parse(vmlinux)?;
    let id = btf
        .struct_id("sock_common")
        .ok_or_else(|| anyhow::anyhow!("no struct sock_common in BTF"))?;
    let at = |field: &str| -> Result<u32> {
        let off = btf
            .offset_of(id, field)
            .ok_or_else(|| anyhow::anyhow!("struct sock_common has no {field}"))?;
        ensure!(
            off >= so::HEAD_LEN && off % 4 == 0,
            "struct sock_common.{field} at {off} is not where an address can be read"
        );
        Ok(u32::try_from(off)?)
    };
    Ok(SockV6 {
        daddr: at("skc_v6_daddr")?,
        rcv_saddr: at("skc_v6_rcv_saddr")?,
    })
}

/// Where the kprobe set reads a `struct sock_common`'s IPv6 addresses.
#[derive(Debug, Clone, Copy)]
pub struct SockV6 {
    pub daddr: u32,
    pub rcv_saddr: u32,
}

/// The kprobe set's IPv6 offsets for this kernel, or why there are none.
pub fn sock_v6_offsets() -> Result<SockV6> {
    let data = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| anyhow::anyhow!("/sys/kernel/btf/vmlinux: {e}"))?;
    sock_v6_addrs(&data)
}

/// Where the state hook finds a socket's network namespace: the `struct net *` at `sk_net` in
/// the sock (`skc_net.net`; absent without CONFIG_NET_NS) and the namespace's inode number at
/// `inum` in that `struct net` (`ns.inum`, what /proc/PID/ns/net shows).
#[derive(Debug, Clone, Copy)]
pub struct SockNetns {
    pub sk_net: u32,
    pub inum: u32,
}

pub fn sock_netns(vmlinux: &[u8]) -> Result<SockNetns> {
    let btf = Btf::parse(vmlinux)?;
    let sk_net = btf.path_offset("sock_common", &["skc_net", "net"])?;
    let inum = btf.path_offset("net", &["ns", "inum"])?;
    ensure!(
        sk_net % 8 == 0 && inum % 4 == 0 && inum != 0,
        "sock_common.skc_net.net at {sk_net} / net.ns.inum at {inum} cannot be read"
    );
    Ok(SockNetns {
        sk_net: u32::try_from(sk_net)?,
        inum: u32::try_from(inum)?,
    })
}

/// The state hook's network-namespace offsets for this kernel, or why there are none.
pub fn sock_netns_offsets() -> Result<SockNetns> {
    let data = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| anyhow::anyhow!("/sys/kernel/btf/vmlinux: {e}"))?;
    sock_netns(&data)
}

/// Where the destroy hook reads a `struct tcp_sock`'s counters.
#[derive(Debug, Clone, Copy)]
pub struct SockCounters {
    pub bytes_acked: u32,
    pub bytes_received: u32,
    pub total_retrans: u32,
}

/// The destroy hook's offsets for this kernel, or why there are none (no BTF: a socket that
/// closes between two polls then keeps the figures of the last poll).
pub fn tcp_sock_offsets() -> Result<SockCounters> {
    let data = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| anyhow::anyhow!("/sys/kernel/btf/vmlinux: {e}"))?;
    tcp_sock_counters(&data)
}

/// Why the kprobe set must not be used on this kernel, if its sock layout is known to differ.
/// Without BTF nothing can be checked: the offsets have been stable since 2.6.
pub fn sock_head_mismatch() -> Option<String> {
    let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    check_sock_head(&data)
        .err()
        .map(|e| format!("kprobe programs disabled: {e:#} (per /sys/kernel/btf/vmlinux)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_the_layout_the_programs_read() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return; // no BTF on this machine: nothing to compare with
        };
        check_sock_head(&data).unwrap();
        let btf = Btf::parse(&data).unwrap();
        let id = btf.struct_id("sock_common").unwrap();
        assert_eq!(btf.offset_of(id, "skc_no_such_field"), None);
        let v6 = sock_v6_addrs(&data).unwrap();
        assert_eq!(Some(v6.daddr as usize), btf.offset_of(id, "skc_v6_daddr"));
        assert_eq!(
            v6.rcv_saddr,
            v6.daddr + 16,
            "adjacent in every kernel since 3.13"
        );
        let c = tcp_sock_counters(&data).unwrap();
        assert!(c.bytes_acked > 1000 && c.bytes_received > 1000 && c.total_retrans > 1000);
        assert!(c.bytes_acked != c.bytes_received);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(check_sock_head(&[]).is_err());
        assert!(
            check_sock_head(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0]).is_err()
        );
        let mut hdr = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        hdr.extend([0, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(check_sock_head(&hdr).is_err());
        assert!(tcp_sock_counters(&hdr).is_err());
        assert!(sock_v6_addrs(&hdr).is_err());
        assert!(sock_netns(&hdr).is_err());
    }
}
