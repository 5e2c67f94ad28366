//! What the rendered objects are called and labelled, and how the manifest's figures are
//! written as Kubernetes quantities.

use std::collections::BTreeMap;

/// The API group of Paracloud's own resources, and the prefix of its labels and annotations.
pub const GROUP: &str = "paracloud.dev";

/// The field manager the operator and `paracloud k8s apply` write under (server-side apply).
pub const FIELD_MANAGER: &str = "paracloud";

/// Label: the application an object belongs to.
pub const APP_LABEL: &str = "paracloud.dev/app";
/// Label: the service a pod runs (a revision's pods carry the name of the service it is a
/// revision of, so that the service's address reaches both).
pub const SERVICE_LABEL: &str = "paracloud.dev/service";
/// Label: the workload (Deployment, StatefulSet or Job) a pod belongs to; a workload's selector.
pub const WORKLOAD_LABEL: &str = "paracloud.dev/workload";
/// Label and annotation: the revision a revision's pods run, such as `canary`.
pub const REVISION_LABEL: &str = "paracloud.dev/revision";
/// Annotation: the SHA-256 of the whole manifest an object was rendered from.
pub const MANIFEST_ANNOTATION: &str = "paracloud.dev/manifest-sha256";
/// Annotation: the SHA-256 of the service's own part of the manifest; it changes exactly when the
/// service does.
pub const SPEC_ANNOTATION: &str = "paracloud.dev/spec-sha256";
/// Annotation on a pod template: the SHA-256 of the configuration (environment, files) its pods
/// read from ConfigMaps and Secrets, so that a change of them rolls the pods.
pub const CONFIG_ANNOTATION: &str = "paracloud.dev/config-sha256";

/// The Kubernetes name of a service of the manifest: a revision `api@canary` is `api-canary`.
pub fn object_name(service: &str) -> String {
    service.replace(paracloud_manifest::REVISION_SEPARATOR, "-")
}

/// The manifest's service (its name and spec) whose pods carry `labels`: the one their
/// [`SERVICE_LABEL`] names, in its object form.
pub fn service_of<'a>(
    manifest: &'a paracloud_manifest::Manifest,
    labels: &BTreeMap<String, String>,
) -> Option<(&'a String, &'a paracloud_manifest::Service)> {
    let label = labels.get(SERVICE_LABEL)?;
    manifest
        .services
        .iter()
        .find(|(service, _)| object_name(service) == *label)
}

/// The labels every object of `app` carries, beside its own.
pub fn app_labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.to_owned(), app.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), app.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
    ])
}

/// CPU in cores as a quantity: whole cores as `2`, else millicores as `500m`.
pub fn cpu_quantity(cores: f64) -> String {
    let millis = (cores * 1000.0).round().max(1.0) as u64;
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// A CPU quantity in cores: `250m`, `1`, `0.5`, `123456789n` (metrics-server's nanocores), `5u`;
/// `None` for anything else.
pub fn cpu_cores(quantity: &str) -> Option<f64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let scale = match suffix {
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

/// Bytes as a quantity, in the largest binary unit that divides them (`64Mi`, `1Gi`, `1500`).
pub fn bytes_quantity(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "Ti"),
        (1 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1 << 10, "Ki"),
    ];
    for (size, suffix) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{suffix}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Whole seconds for a duration field of Kubernetes that counts in seconds, at least `min`.
pub fn seconds(duration: std::time::Duration, min: u64) -> i32 {
    let secs = duration.as_millis().div_ceil(1000) as u64;
    secs.max(min).min(i32::MAX as u64) as i32
}

/// The hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The security context of Paracloud's own containers (the operator, the data plane): no
/// privilege escalation, a read-only root, no capability.
pub fn locked_down() -> k8s_openapi::api::core::v1::SecurityContext {
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod security context of Paracloud's own pods: not root (uid and gid 65532), the
/// runtime's default seccomp profile.
pub fn non_root_pod() -> k8s_openapi::api::core::v1::PodSecurityContext {
    use k8s_openapi::api::core::v1::{PodSecurityContext, SeccompProfile};
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Deployment's rollout, make before break as on one machine: one pod more at a time, none
/// less.
pub fn make_before_break() -> k8s_openapi::api::apps::v1::DeploymentStrategy {
    use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

/// Resources as (cpu, memory) limits and requests, quantities as written: `("500m", "128Mi")`.
pub fn resources(
    limits: (&str, &str),
    requests: (&str, &str),
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let pair = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some(pair(limits)),
        requests: Some(pair(requests)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_written_as_kubectl_would() {
        assert_eq!(cpu_quantity(0.5), "500m");
        assert_eq!(cpu_quantity(1.0), "1");
        assert_eq!(cpu_quantity(2.25), "2250m");
        assert_eq!(cpu_quantity(0.0001), "1m");
        for (quantity, cores) in [
            ("250m", 0.25),
            ("1", 1.0),
            ("0.5", 0.5),
            ("123456789n", 0.123456789),
            ("5u", 0.000005),
            ("2k", 2000.0),
        ] {
            let parsed = cpu_cores(quantity).unwrap();
            assert!((parsed - cores).abs() < 1e-12, "{quantity}: {parsed}");
        }
        for bad in ["", "m", "1Ki", "-1", "abc", "1.5x", "NaN"] {
            assert_eq!(cpu_cores(bad), None, "{bad}");
        }
        assert_eq!(bytes_quantity(64 << 20), "64Mi");
        assert_eq!(bytes_quantity(1 << 30), "1Gi");
        assert_eq!(bytes_quantity(1536), "1536");
        assert_eq!(bytes_quantity(3 << 10), "3Ki");
    }

    #[test]
    fn revisions_get_a_dns_name() {
        assert_eq!(object_name("api@canary"), "api-canary");
        assert_eq!(object_name("web"), "web");
    }
}
