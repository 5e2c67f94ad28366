//! Compose's small value languages: Go durations, Docker memory sizes, port specifications.

use std::time::Duration;

/// A Go duration such as `1m30s`, `500ms` or `1.5h` (units ns, us, µs, ms, s, m, h).
pub(crate) fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut nanos: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    if !nanos.is_finite() || nanos > 1e18 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// A duration as the manifest writes it: whole seconds when it is, else milliseconds (rounded up,
/// so that a positive duration stays positive).
pub(crate) fn manifest_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        let millis = duration.as_nanos().div_ceil(1_000_000);
        format!("{millis}ms")
    }
}

/// A Docker memory size: bytes, or a number with `b`, `k`, `m`, `g` or `t` (powers of 1024, any
/// case, an optional trailing `b`), in the manifest's form (`"512M"`, or bytes).
pub(crate) fn memory(text: &str) -> Result<String, String> {
    let bad = || format!("invalid memory size {text:?}");
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let unit = match unit {
        "" | "b" => "",
        "k" | "kb" => "K",
        "m" | "mb" => "M",
        "g" | "gb" => "G",
        "t" | "tb" => "T",
        _ => return Err(bad()),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return Ok(format!("{whole}{unit}"));
    }
    let fraction: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "K" => 1024f64,
        "M" => 1024f64.powi(2),
        "G" => 1024f64.powi(3),
        "T" => 1024f64.powi(4),
        _ => 1.0,
    };
    let bytes = fraction * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(format!("{}", bytes as u64))
}

/// An inclusive range of ports, `8080` or `8080-8089`.
pub(crate) fn port_range(text: &str) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{s:?} is not a port number (1 to 65535)")),
        }
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("the range {text:?} runs backwards"));
            }
            Ok((a, b))
        }
        None => one(text).map(|p| (p, p)),
    }
}

/// A short port specification, `[[HOST_IP:][HOST_PORTS]:]PORTS[/PROTOCOL]`, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShortPort<'a> {
    pub(crate) host_ip: Option<&'a str>,
    pub(crate) published: Option<&'a str>,
    pub(crate) target: &'a str,
    pub(crate) protocol: Option<&'a str>,
}

pub(crate) fn short_port(text: &str) -> ShortPort<'_> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, protocol)) => (spec, Some(protocol)),
        None => (text, None),
    };
    // The container port is after the last colon; an IPv6 host address is in brackets.
    let (head, target) = match spec.rsplit_once(':') {
        Some((head, target)) => (Some(head), target),
        None => (None, spec),
    };
    let (host_ip, published) = match head {
        None => (None, None),
        Some(head) => match head.rsplit_once(':') {
            Some((ip, published)) => (Some(ip), Some(published)),
            None => (None, Some(head)),
        },
    };
    ShortPort {
        host_ip,
        published: published.filter(|p| !p.is_empty()),
        target,
        protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(go_duration("10us"), Ok(Duration::from_micros(10)));
        for bad in ["", "10", "s", "1x", "1.2.3s", "-1s"] {
            assert!(go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_in_the_manifest() {
        assert_eq!(manifest_duration(Duration::from_secs(90)), "90s");
        assert_eq!(manifest_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(manifest_duration(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(memory("512m").unwrap(), "512M");
        assert_eq!(memory("1GB").unwrap(), "1G");
        assert_eq!(memory("1048576").unwrap(), "1048576");
        assert_eq!(memory("1.5k").unwrap(), "1536");
        assert!(memory("lots").is_err());
        assert!(memory("1e400g").is_err());
    }

    #[test]
    fn short_ports_split() {
        let p = short_port("127.0.0.1:8080:80/tcp");
        assert_eq!(
            p,
            ShortPort {
                host_ip: Some("127.0.0.1"),
                published: Some("8080"),
                target: "80",
                protocol: Some("tcp")
            }
        );
        assert_eq!(short_port("80").published, None);
        assert_eq!(short_port("8080:80").published, Some("8080"));
        assert_eq!(short_port("[::1]:8080:80").host_ip, Some("[::1]"));
        assert_eq!(short_port("127.0.0.1::80").published, None);
        assert_eq!(port_range("8080-8081"), Ok((8080, 8081)));
        assert!(port_range("0").is_err() && port_range("9-8").is_err());
    }
}
