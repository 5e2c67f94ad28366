//! `[capsules.NAME]`: the application's own capsules, each added to the capsules the rest of the
//! manifest (service policies, schedules) may name.

use std::collections::BTreeMap;

use paracloud_capsule::Access;
use toml::de::DeValue;
use toml::Spanned;

use crate::model::{AppCapsule, Image};
use crate::reader::{child, Checker};

const CAPSULE_KEYS: &[&str] = &[
    "image",
    "command",
    "env",
    "description",
    "usage",
    "access",
    "capabilities",
    "resources",
    "timeout",
];

impl Checker<'_> {
    /// `[capsules]`: the application's own capsules, by name. Each is added to the capsules
    /// the services' policies and the schedules may name.
    pub(crate) fn app_capsules(
        &mut self,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<BTreeMap<String, AppCapsule>> {
        let table = self.table(value, "capsules")?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, item) in table {
            let name: &str = key.get_ref();
            let field = child("capsules", name);
            let named = self.name(name, key.span(), &field, "capsule name");
            if paracloud_capsule::builtin(name).is_some() {
                self.error(
                    key.span(),
                    &field,
                    format!("capsule {name:?} is built in"),
                    Some(format!(
                        "give the application's own capsule another name, such as \"{name}-app\""
                    )),
                );
                ok = false;
                continue;
            }
            match self.app_capsule(name, item, &field) {
                Some(capsule) if named => {
                    self.capsules.specs.push(capsule.spec());
                    out.insert(name.to_owned(), capsule);
                }
                _ => {
                    self.capsules.broken.push(name.to_owned());
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn app_capsule(
        &mut self,
        name: &str,
        value: &Spanned<DeValue<'_>>,
        field: &str,
    ) -> Option<AppCapsule> {
        let table = self.table(value, field)?;
        self.check_keys(table, field, CAPSULE_KEYS);
        let get = |key: &str| table.get(key);
        let image = match get("image") {
            None => {
                self.missing(
                    value.span(),
                    &child(field, "image"),
                    "add `image = \"NAME:TAG\"` for an image of the store (`paracloud build -t NAME:TAG DIR` makes one), `image = \"oci:PATH\"` or `image = \"dir:PATH\"`",
                );
                None
            }
            Some(v) => match self.image(v, &child(field, "image")) {
                None => None,
                Some(Image::Host { .. }) => {
                    self.error(
                        v.span(),
                        &child(field, "image"),
                        "a capsule brings its own image, not the host's programs",
                        Some("name an image of the store, such as `image = \"tools:1\"` (`paracloud build -t tools:1 DIR` makes one), or `image = \"dir:PATH\"`".into()),
                    );
                    None
                }
                image => image,
            },
        };
        let command = match get("command") {
            Some(v) => match self.words(v, &child(field, "command")) {
                Some(words) if words.is_empty() => {
                    self.error(
                        v.span(),
                        &child(field, "command"),
                        "the command is empty",
                        Some("name the program to run, such as `command = [\"/bin/report\"]`, or leave `command` out to run the image's entrypoint".into()),
                    );
                    None
                }
                words => words,
            },
            None => Some(Vec::new()),
        };
        let env = match get("env") {
            Some(v) => self.env(v, &child(field, "env")),
            None => Some(BTreeMap::new()),
        };
        let text = |this: &mut Self, key: &str| match get(key) {
            Some(v) => this.string(v, &child(field, key)).map(str::to_owned),
            None => Some(String::new()),
        };
        let description = text(self, "description");
        let usage = text(self, "usage");
        let access = match get("access") {
            Some(v) => match self.string(v, &child(field, "access")) {
                None => None,
                Some(given) => match Access::parse(given) {
                    Some(access) => Some(access),
                    None => {
                        self.error(
                            v.span(),
                            &child(field, "access"),
                            format!("unknown access {given:?}"),
                            Some("use \"read\" (the instance's files read-only, the default) or \"write\"".into()),
                        );
                        None
                    }
                },
            },
            None => Some(Access::Read),
        };
        let capabilities = match get("capabilities") {
            Some(v) => self.capabilities(v, &child(field, "capabilities")),
            None => Some(Vec::new()),
        };
        let limits = match get("resources") {
            Some(v) => {
                self.resources(v, &child(field, "resources"))
                    .map(|r| paracloud_capsule::Limits {
                        cpu: r.cpu.unwrap_or(paracloud_capsule::DEFAULT_LIMITS.cpu),
                        memory: r.memory.unwrap_or(paracloud_capsule::DEFAULT_LIMITS.memory),
                        pids: r.pids.unwrap_or(paracloud_capsule::DEFAULT_LIMITS.pids),
                    })
            }
            None => Some(paracloud_capsule::DEFAULT_LIMITS),
        };
        let timeout = match get("timeout") {
            Some(v) => self.positive_duration(v, &child(field, "timeout")),
            None => Some(paracloud_capsule::DEFAULT_TIMEOUT),
        };
        Some(AppCapsule {
            name: name.to_owned(),
            description: description?,
            usage: usage?,
            image: image?,
            command: command?,
            env: env?,
            access: access?,
            capabilities: capabilities?,
            limits: limits?,
            timeout: timeout?,
        })
    }
}
