//! Fuzz target: the operator's decision for a `ParacloudApp` whose manifest is any text (anyone
//! who may create the resource writes it) never panics, and every object it would apply has a
//! name Kubernetes takes and a body that serializes; its autoscaler's changes, for decisions at
//! the extremes, stay within each service's bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paracloud_kube::reconcile::{reconcile, Observed};
use paracloud_kube::{ParacloudApp, ParacloudAppSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = std::str::from_utf8(data) else {
        return;
    };
    let mut app = ParacloudApp::new(
        "fuzzed",
        ParacloudAppSpec {
            manifest: manifest.to_owned(),
            registry: Some("registry.example".into()),
            scale: Default::default(),
            weights: Default::default(),
            migrating: Default::default(),
            directories: vec!["/srv".into()],
        },
    );
    app.metadata.namespace = Some("team".into());
    app.metadata.uid = Some("uid".into());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    );
    for resize in [true, false] {
        let observed = Observed {
            resize,
            ..Observed::default()
        };
        let decision = reconcile(&app, &observed, &now);
        for object in &decision.apply {
            let name = &object.key.name;
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
                "{name:?}"
            );
            let _ = paracloud_kube::to_yaml(std::slice::from_ref(object));
        }
    }
    let Ok(manifest) = paracloud_kube::reconcile::manifest(&app) else {
        return;
    };
    let Some(config) = paracloud_manifest::scaling_config(&manifest) else {
        return;
    };
    for (instances, cpu) in [(0, 0.0), (u32::MAX, f64::MAX), (1, f64::NAN), (3, -1.0)] {
        let decisions = config
            .services
            .keys()
            .map(|service| paracloud_autoscale::Decision {
                service: service.clone(),
                instances,
                cpu,
                reason: "fuzzed".into(),
            })
            .collect();
        for change in paracloud_kube::autoscale::changes(&app, &manifest, &config, decisions, None)
        {
            let bounds = &config.services[&change.service];
            if let Some((_, to)) = change.replicas {
                assert!((bounds.min_instances..=bounds.max_instances).contains(&to));
            }
            if let Some((_, to)) = change.cpu {
                assert!(
                    to.is_finite() && to >= bounds.cpu_min - 0.005 && to <= bounds.cpu_max + 0.005
                );
            }
            let _ = change.patch();
        }
    }
});
