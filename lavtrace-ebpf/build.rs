//! The object is linked by the external `bpf-linker` binary, which cargo does not know about:
//! rebuild when that binary changes (as aya-template does).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
