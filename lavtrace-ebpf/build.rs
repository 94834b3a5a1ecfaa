//! The object is linked by the external `bpf-linker` binary, which cargo does not know about:
//! rebuild when that binary changes (as aya-template does). `bpf_target_arch` is set by
//! lavtrace's build script (as aya-ebpf's own build does for itself): declared here so the
//! few registers read by name are checked per architecture.
use which::which;

fn main() {
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"arm\", \"aarch64\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
