//! reader (being written)
