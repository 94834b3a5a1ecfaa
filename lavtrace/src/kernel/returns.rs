//! The `ret` instructions of a function's machine code, for plain uprobes at each of them
//! where a uretprobe cannot be used (a uretprobe rewrites the return address on the stack;
//! see `amqp::tls`). x86-64 only: decoded with iced-x86, every instruction from the first to
//! the symbol's end, so a byte 0xC3 inside another instruction is never taken for a `ret`.
//!
//! Refused, with the reason, where the function can leave other than by a `ret` that a
//! uprobe there would see: a jump out of the function (a tail call), an indirect jump
//! (a tail call through a pointer, or a jump table whose targets are not known here), or
//! code that does not decode.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

/// Offsets from the function's start of each `ret`.
pub fn ret_offsets(code: &[u8]) -> Result<Vec<u64>, String> {
    let end = code.len() as u64;
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut rets = Vec::new();
    for insn in &mut decoder {
        let at = insn.ip();
        if insn.is_invalid() {
            return Err(format!("undecodable instruction at +{at:#x}"));
        }
        match insn.flow_control() {
            FlowControl::Return => {
                if insn.mnemonic() != Mnemonic::Ret {
                    return Err(format!("{:?} at +{at:#x}", insn.mnemonic()));
                }
                rets.push(at);
            }
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                let to = insn.near_branch_target();
                if to >= end {
                    return Err(format!("a jump out of the function at +{at:#x}"));
                }
            }
            FlowControl::IndirectBranch => {
                return Err(format!("an indirect jump at +{at:#x}"));
            }
            _ => {}
        }
    }
    if rets.is_empty() {
        return Err("no ret instruction".into());
    }
    Ok(rets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ret_is_found_and_a_c3_inside_an_instruction_is_not_one() {
        let code = [
            0x48, 0x83, 0xec, 0x18, // sub rsp, 0x18
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3
            0x85, 0xc0, // test eax, eax
            0x74, 0x01, // je +1 (to the second ret)
            0xc3, // ret
            0xf3, 0xc3, // repz ret
        ];
        assert_eq!(ret_offsets(&code), Ok(vec![13, 14]));
    }

    #[test]
    fn a_tail_call_an_indirect_jump_or_garbage_is_refused() {
        // jmp rel32 far beyond the function.
        assert!(ret_offsets(&[0xe9, 0x00, 0x10, 0x00, 0x00, 0xc3]).is_err());
        // jmp rax.
        assert!(ret_offsets(&[0xff, 0xe0, 0xc3]).is_err());
        // A truncated instruction.
        assert!(ret_offsets(&[0xc3, 0x48]).is_err());
        assert!(ret_offsets(&[]).is_err());
        // No way out.
        assert!(ret_offsets(&[0x90, 0xeb, 0xfd]).is_err());
    }

    /// This machine's libssl (the tests link none: read from the file, as `Library` does).
    #[test]
    fn the_ssl_calls_of_this_machines_libssl_each_have_a_ret() {
        let Some(path) = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/lib64/libssl.so.3",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists()) else {
            eprintln!("no libssl.so.3 here: skipped");
            return;
        };
        let lib = crate::kernel::uprobe::Library::at(path, path.into()).unwrap();
        for f in ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"] {
            let (_, code) = lib
                .code(f)
                .unwrap()
                .unwrap_or_else(|| panic!("{f} not exported"));
            let rets = ret_offsets(&code).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!rets.is_empty(), "{f}");
        }
    }
}
