//! Shared pieces of the shop example.
