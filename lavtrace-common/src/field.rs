//! Tracepoint record fields the kernel programs read at offsets taken from the running kernel.
//! Each family lists the fields it needs (`FIELDS` in its module); userspace reads the tracefs
//! `events/<category>/<event>/format` files of the families it loads, checks name and size,
//! and sets each offset as a `u32` read-only global before the object is loaded.

/// One field one family's programs read from one tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// The `u32` global in the eBPF object that receives the field's byte offset. Several
    /// specs may name one global (events of one class, read by one program): their offsets
    /// must then agree.
    pub global: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    pub field: &'static str,
    /// Bytes the program reads.
    pub size: u32,
    /// For a field only some kernels have: the `u8` global set to 1 when it is there (the
    /// program reads the field only then). `None`: the field is required.
    pub present: Option<&'static str>,
}

impl FieldSpec {
    pub const fn new(
        global: &'static str,
        category: &'static str,
        event: &'static str,
        field: &'static str,
        size: u32,
    ) -> FieldSpec {
        FieldSpec {
            global,
            category,
            event,
            field,
            size,
            present: None,
        }
    }

    /// Marks the field optional, with `flag` the global that says whether it is there.
    pub const fn optional(self, flag: &'static str) -> FieldSpec {
        FieldSpec {
            present: Some(flag),
            ..self
        }
    }
}
