//! Which process the kernel programs keep. Set once at load time as read-only globals, so the
//! per-event filter is a single compare against a constant the verifier knows.

/// Symbol of the `u32` global that holds the target's tgid (its pid as `ps` shows it).
pub const TARGET_TGID: &str = "FILTER_TARGET_TGID";
