//! Which container of a pod a request is about, as the real server picks it (a pod's log, an
//! exec).

use serde_json::Value;

use crate::error::ApiError;

/// The container a pod's log or exec is about, as the real server picks it: the one asked for,
/// which must be one of the pod's (init and ephemeral containers included), or else its only
/// container.
pub(crate) fn container_of(
    pod: &Value,
    pod_name: &str,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let containers = names("containers");
    let (init, ephemeral) = (names("initContainers"), names("ephemeralContainers"));
    match asked.filter(|c| !c.is_empty()) {
        Some(c)
            if [&containers, &init, &ephemeral]
                .iter()
                .any(|n| n.iter().any(|n| n == c)) =>
        {
            Ok(c.to_owned())
        }
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!("a container name must be specified for pod {pod_name}");
            if !containers.is_empty() {
                // Go prints a list of names as `[a b]`.
                message += &format!(", choose one of: [{}]", containers.join(" "));
                if !init.is_empty() {
                    message += &format!(" or one of the init containers: [{}]", init.join(" "));
                }
                if !ephemeral.is_empty() {
                    message += &format!(
                        " or one of the ephemeral containers: [{}]",
                        ephemeral.join(" ")
                    );
                }
            }
            Err(ApiError::bad_request(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_as_the_real_server_picks_them() {
        let pod = json!({"spec": {
            "containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "setup"}],
        }});
        assert_eq!(container_of(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(container_of(&pod, "p", Some("setup")).unwrap(), "setup");
        assert_eq!(
            container_of(&pod, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [setup]"
        );
        assert_eq!(
            container_of(&pod, "p", Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
        let single = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(container_of(&single, "p", Some("")).unwrap(), "c");
    }
}
