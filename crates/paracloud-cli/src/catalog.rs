//! `paracloud catalog ls`: the services of the catalogue, as the daemon's machine can run them.

use anyhow::Result;
use paracloud_api::routes::ListCatalog;

use crate::cli::{CatalogCommand, Global};
use crate::client::{connect, explain};
use crate::output::{print, table};

pub async fn command(global: &Global, command: CatalogCommand) -> Result<()> {
    match command {
        CatalogCommand::Ls => ls(global).await,
    }
}

async fn ls(global: &Global) -> Result<()> {
    let catalog = connect(global)
        .await?
        .call(&ListCatalog)
        .await
        .map_err(explain)?;
    print(global.output, &catalog, |catalog| {
        let rows: Vec<Vec<String>> = catalog
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.versions.join(", "),
                    c.addresses
                        .iter()
                        .map(|a| format!("{} ({})", a.name, a.meaning))
                        .collect::<Vec<_>>()
                        .join("; "),
                    match &c.missing {
                        None => "ready".into(),
                        Some(_) => format!("needs {}", c.package),
                    },
                    c.summary.clone(),
                ]
            })
            .collect();
        let mut text = table(
            &[
                "NAME",
                "VERSIONS",
                "ADDRESSES",
                "ON THIS MACHINE",
                "SUMMARY",
            ],
            &rows,
        );
        for c in catalog {
            text.push_str(&format!(
                "\n[services.NAME] catalog = \"{}\" takes:\n",
                c.name
            ));
            for key in &c.keys {
                text.push_str(&format!("  {:<10} {}\n", key.name, key.meaning));
            }
            if let Some(missing) = &c.missing {
                text.push_str(&format!("  (cannot run here: {missing})\n"));
            }
        }
        text
    })
}
