//! paracloud-state
