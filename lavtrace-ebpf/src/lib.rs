#![no_std]
// The library target lets `lavtrace` name this crate as a build-dependency, so cargo rebuilds
// the embedded object whenever the kernel programs change. The programs live in the binary.
