//! Revisions side by side, as a user meets them: a canary declared in the manifest takes its
//! share of the shop's requests, the `x-paracloud-revision` header reaches it, and
//! `paracloud traffic` moves the share.

mod common;

use std::time::Duration;

use common::*;

/// Which web instance served each of `n` pages, as (canary pages, all pages).
fn canary_share(p: &Platform, n: usize, headers: &[(&str, &str)]) -> (usize, usize) {
    let mut canary = 0;
    for _ in 0..n {
        let (status, body) = http_get_with(p.port(0), "/", headers).unwrap();
        assert_eq!(status, 200, "{body}");
        if body.contains("web: web@canary.") {
            canary += 1;
        } else {
            assert!(body.contains("web: web."), "served by neither: {body}");
        }
    }
    (canary, n)
}

#[test]
fn a_canary_gets_its_share_and_its_header_and_traffic_moves_the_share() {
    let p = Platform::new();
    let shop = std::fs::read_to_string(p.shop()).unwrap();
    let manifest = p.manifest(
        "shop-canary",
        &format!("{shop}\n[services.web.revisions.canary]\nweight = 20\n"),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    p.wait_ps("shop", Duration::from_secs(30), "the canary ready", |ps| {
        ps.iter()
            .any(|i| field(i, "service") == "web@canary" && field(i, "state") == "running")
    });

    let (canary, all) = canary_share(&p, 1000, &[]);
    // Smooth weighted round robin gives exactly 200; allow for a route change in between.
    assert!(
        (180..=220).contains(&canary),
        "a 20% canary served {canary} of {all} pages"
    );
    let (canary, all) = canary_share(&p, 50, &[("x-paracloud-revision", "canary")]);
    assert_eq!(canary, all, "the header routes every request to the canary");

    let table = p.ok(&["traffic", "web", "canary=50"]);
    assert!(
        table.contains("50%") && table.contains("web@canary"),
        "{table}"
    );
    let (canary, all) = canary_share(&p, 400, &[]);
    assert!(
        (180..=220).contains(&canary),
        "a 50% canary served {canary} of {all} pages"
    );
    let shown = p.ok(&["traffic", "web", "-o", "json"]);
    let shares: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shares[0]["weight"], 50, "{shown}");
    assert_eq!(shares[1]["revision"], "canary", "{shown}");

    for (args, expected) in [
        (
            &["traffic", "web", "nope=10"][..],
            "web has no revision named nope (its revisions: canary)",
        ),
        (
            &["traffic", "web", "canary=150"][..],
            "the share is a percent from 0 to 100",
        ),
        (&["traffic", "web", "canary"][..], "is not REVISION=PERCENT"),
        (
            &["traffic", "api", "canary=10"][..],
            "api has no revision named canary (it has none",
        ),
        (
            &["traffic", "web@canary", "canary=10"][..],
            "web@canary is revision canary of web",
        ),
    ] {
        let error = p.fails(args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    let (canary, all) = canary_share(&p, 100, &[]);
    assert!(
        (40..=60).contains(&canary),
        "a refused change keeps the 50% split: {canary} of {all}"
    );
    p.ok(&["down"]);
}
