//! Shared pieces of the shop example: the kv protocol, store and client, the api's JSON model, the
//! web page, CPU work, and process plumbing (hostname, signals, logs, HTTP serving).

pub mod client;
pub mod kv;
pub mod model;
pub mod page;
pub mod store;
pub mod sys;
pub mod work;
