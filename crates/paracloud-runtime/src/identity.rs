//! How an instance's command runs: user and groups from the instance's /etc files, the kept
//! capabilities, no_new_privs, the environment, and the final execve with a PATH search.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

/// Directories searched after the Host rootfs' extra paths when `env` has no PATH.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type InitResult<T> = std::result::Result<T, String>;

/// The user an instance's processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `uid`, `uid:gid`, `name` or `name:group` (None means root) against the instance's
/// /etc/passwd and /etc/group contents.
pub(crate) fn resolve_user(spec: Option<&str>, passwd: &str, group: &str) -> InitResult<Identity> {
    let spec = spec.unwrap_or("0");
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group_spec == Some("") {
        return Err(format!(
            "invalid user {spec:?}: use uid, uid:gid, name or name:group"
        ));
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| format!("user {user:?} not found in the instance's /etc/passwd"))?,
        ),
    };
    let uid = match (&entry, user.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(e), Err(_)) => e.uid,
        (None, Err(_)) => unreachable!("a name without an entry returned above"),
    };
    let gid = match group_spec {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| format!("group {g:?} not found in the instance's /etc/group"))?,
        },
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.home.to_string()).filter(|h| !h.is_empty()),
    })
}

/// Capability names as the manifest gives them ("CAP_NET_BIND_SERVICE", "net_bind_service").
pub(crate) fn parse_capabilities(names: &[String]) -> std::result::Result<CapsHashSet, String> {
    names
        .iter()
        .map(|name| {
            let upper = name.trim().to_ascii_uppercase();
            let canonical = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            Capability::from_str(&canonical).map_err(|_| format!("unknown capability {name:?}"))
        })
        .collect()
}

/// The capabilities whose bits are set in a /proc/PID/status mask such as CapBnd.
pub(crate) fn capabilities_from_mask(mask: u64) -> CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect()
}

/// The environment of the command: exactly `env`, plus PATH, HOSTNAME and HOME when absent.
pub(crate) fn build_env(
    env: &BTreeMap<String, String>,
    path_prefix: &[String],
    hostname: &str,
    home: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = env.clone();
    out.entry("PATH".into()).or_insert_with(|| {
        path_prefix
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(DEFAULT_PATH))
            .collect::<Vec<_>>()
            .join(":")
    });
    out.entry("HOSTNAME".into())
        .or_insert_with(|| hostname.to_string());
    out.entry("HOME".into())
        .or_insert_with(|| home.unwrap_or("/").to_string());
    out.into_iter().collect()
}

/// Default dispositions and an empty signal mask: ignored signals (Rust ignores SIGPIPE) and
/// the mask survive execve, and the command must not inherit ours.
pub(crate) fn reset_signals() {
    crate::sys::default_signal_dispositions();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Becomes `identity`, keeping exactly `kept` in every capability set (bounding, effective,
/// permitted, inheritable, ambient, so they survive execve for any uid), then sets
/// no_new_privs. Must run as root with all capabilities.
pub(crate) fn switch_identity(identity: &Identity, kept: &CapsHashSet) -> InitResult<()> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("cannot {what}: {e}");
    for cap in caps::runtime::thread_all_supported() {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| fail(&format!("drop {cap} from the bounding set"), &e))?;
        }
    }
    crate::sys::set_keep_capabilities().map_err(|e| fail("set keepcaps", &e))?;
    let groups: Vec<Gid> = identity.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(|e| fail(&format!("set groups {:?}", identity.groups), &e))?;
    let gid = Gid::from_raw(identity.gid);
    setresgid(gid, gid, gid).map_err(|e| fail(&format!("set gid {}", identity.gid), &e))?;
    let uid = Uid::from_raw(identity.uid);
    setresuid(uid, uid, uid).map_err(|e| fail(&format!("set uid {}", identity.uid), &e))?;
    caps::set(None, CapSet::Inheritable, kept)
        .map_err(|e| fail("set the inheritable capabilities", &e))?;
    caps::set(None, CapSet::Effective, kept)
        .map_err(|e| fail("set the effective capabilities", &e))?;
    caps::set(None, CapSet::Permitted, kept)
        .map_err(|e| fail("set the permitted capabilities", &e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clear the ambient capabilities", &e))?;
    for cap in kept {
        caps::raise(None, CapSet::Ambient, *cap)
            .map_err(|e| fail(&format!("raise {cap} in the ambient set"), &e))?;
    }
    crate::sys::set_no_new_privileges().map_err(|e| fail("set no_new_privs", &e))?;
    Ok(())
}

/// execve's `argv` with exactly `env`, searching argv[0] in env's PATH when it has no '/'.
/// Returns only on failure, with the reason.
pub(crate) fn exec(argv: &[String], env: &[(String, String)]) -> String {
    let Some(program) = argv.first() else {
        return "empty command".into();
    };
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let build = || -> InitResult<(Vec<CString>, Vec<CString>)> {
        let args = argv
            .iter()
            .map(|a| to_c(a))
            .collect::<InitResult<Vec<_>>>()?;
        let envs = env
            .iter()
            .map(|(k, v)| to_c(&format!("{k}={v}")))
            .collect::<InitResult<Vec<_>>>()?;
        Ok((args, envs))
    };
    let (args, envs) = match build() {
        Ok(built) => built,
        Err(e) => return e,
    };
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        path.split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                format!("{}/{program}", dir.trim_end_matches('/'))
            })
            .collect()
    };
    let mut denied = None;
    for candidate in candidates {
        let Ok(file) = CString::new(candidate.clone()) else {
            continue;
        };
        let err = match nix::unistd::execve(&file, &args, &envs) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        match err {
            nix::Error::ENOENT | nix::Error::ENOTDIR => continue,
            nix::Error::EACCES => denied = Some(candidate),
            other => return format!("cannot execute {candidate}: {other}"),
        }
    }
    match denied {
        Some(path) => format!("permission denied: {program} ({path})"),
        None => format!("command not found: {program}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:app\nstaff:x:50:app,daemon\napp:x:1000:\n\
                         nogroup:x:65534:\n";

    fn user(spec: Option<&str>) -> InitResult<Identity> {
        resolve_user(spec, PASSWD, GROUP)
    }

    #[test]
    fn users_resolve_by_name_number_and_group() {
        assert_eq!(
            user(None).unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![0],
                home: Some("/root".into())
            }
        );
        let app = user(Some("app")).unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.groups, vec![1000, 4, 50]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        assert_eq!(user(Some("1000")).unwrap(), app);
        let g = user(Some("app:staff")).unwrap();
        assert_eq!((g.uid, g.gid), (1000, 50));
        let numeric = user(Some("4242:4343")).unwrap();
        assert_eq!((numeric.uid, numeric.gid, numeric.home), (4242, 4343, None));
        assert_eq!(user(Some("4242")).unwrap().gid, 0);
    }

    #[test]
    fn unknown_users_and_groups_are_named_in_the_error() {
        assert!(user(Some("ghost")).unwrap_err().contains("\"ghost\""));
        assert!(user(Some("app:ghosts")).unwrap_err().contains("\"ghosts\""));
        assert!(user(Some(":1")).is_err());
        assert!(user(Some("1:")).is_err());
    }

    #[test]
    fn env_gets_path_hostname_and_home_only_when_absent() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        let built = build_env(&env, &["/opt/app/bin".into()], "api.1", None);
        let get = |k: &str| {
            built
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("A").as_deref(), Some("1"));
        assert_eq!(get("PATH").unwrap(), format!("/opt/app/bin:{DEFAULT_PATH}"));
        assert_eq!(get("HOSTNAME").as_deref(), Some("api.1"));
        assert_eq!(get("HOME").as_deref(), Some("/"));
        assert_eq!(built.len(), 4);

        env.insert("PATH".into(), "/x".into());
        env.insert("HOME".into(), "/h".into());
        let built = build_env(&env, &[], "h", Some("/root"));
        assert!(built.contains(&("PATH".into(), "/x".into())));
        assert!(built.contains(&("HOME".into(), "/h".into())));
    }

    #[test]
    fn capability_names_are_normalised() {
        let set =
            parse_capabilities(&["CAP_NET_BIND_SERVICE".into(), "sys_ptrace".into()]).unwrap();
        assert!(set.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(set.contains(&Capability::CAP_SYS_PTRACE));
        assert!(parse_capabilities(&["CAP_FLY".into()])
            .unwrap_err()
            .contains("CAP_FLY"));
        let from_mask = capabilities_from_mask(0x400);
        assert_eq!(from_mask.len(), 1);
        assert!(from_mask.contains(&Capability::CAP_NET_BIND_SERVICE));
    }

    #[test]
    fn exec_reports_a_missing_command() {
        let env = vec![("PATH".to_string(), "/nonexistent-dir".to_string())];
        assert_eq!(
            exec(&["no-such-cmd".into()], &env),
            "command not found: no-such-cmd"
        );
        assert_eq!(
            exec(&["/nonexistent-dir/x".into()], &env),
            "command not found: /nonexistent-dir/x"
        );
    }
}
