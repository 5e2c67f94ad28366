//! `GET /v1/openapi.json`: the daemon serves the description generated from its routes, and
//! routes every operation it describes.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn the_daemon_serves_its_description_and_routes_every_operation_in_it() {
    let p = Platform::new();
    p.ok(&["ps"]);
    let socket = p.root().join(paracloud_api::SOCKET_NAME);
    let (status, text) = unix_http(&socket, "GET", "/v1/openapi.json", "");
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, paracloud_api::openapi::document_json());
    let document: Value = serde_json::from_str(&text).unwrap();
    let paths = document["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            // Parameters filled with values that name nothing, and a body that is not JSON:
            // every handler refuses before acting, but only a registered route reaches one.
            let target = path.replace("{run}", "999999").replace(['{', '}'], "");
            let (status, body) = unix_http(&socket, &method.to_uppercase(), &target, "{");
            assert!(
                status != 405 && !body.contains("no such API route"),
                "{method} {path}: not routed by the daemon ({status}: {body})"
            );
        }
    }
    assert_eq!(operations, paracloud_api::openapi::ROUTES.len());
}
