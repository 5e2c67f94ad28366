//! paracloud-daemon
