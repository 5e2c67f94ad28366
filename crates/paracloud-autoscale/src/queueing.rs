//! Queueing formulas (being written now).
