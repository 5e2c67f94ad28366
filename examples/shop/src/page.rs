//! The shop's HTML page and its error page, rendered from the api's answer.

use std::fmt::Write;

use crate::model::Products;

/// The shop page: products, visit count, and which instance of each tier served it.
pub fn render(web_host: &str, products: &Products) -> String {
    let mut items = String::new();
    for p in &products.products {
        // Writing to a String cannot fail.
        let _ = writeln!(
            items,
            "      <li>{} <span class=\"price\">{}.{:02} €</span></li>",
            escape(&p.name),
            p.price_cents / 100,
            p.price_cents % 100
        );
    }
    format!(
        "<!doctype html>\n<html>\n  <head><meta charset=\"utf-8\"><title>Paracloud shop</title></head>\n  <body>\n    <h1>Paracloud shop</h1>\n    <ul>\n{items}    </ul>\n    <p>Visits: <span id=\"visits\">{visits}</span></p>\n    <p id=\"tiers\">web: {web} · api: {api} · kv: ok</p>\n  </body>\n</html>\n",
        visits = products.visits,
        web = escape(web_host),
        api = escape(&products.served_by),
    )
}

/// The page shown when a tier behind the web failed.
pub fn render_error(web_host: &str, tier: &str, message: &str) -> String {
    format!(
        "<!doctype html>\n<html>\n  <head><meta charset=\"utf-8\"><title>Paracloud shop</title></head>\n  <body>\n    <h1>Paracloud shop</h1>\n    <p id=\"error\">{tier} tier failed: {message}</p>\n    <p id=\"tiers\">web: {web}</p>\n  </body>\n</html>\n",
        tier = escape(tier),
        message = escape(message),
        web = escape(web_host),
    )
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalogue;

    #[test]
    fn page_names_all_tiers_and_escapes() {
        let page = render(
            "web.1",
            &Products {
                products: catalogue(),
                visits: 7,
                work: 1,
                checksum: 2,
                served_by: "api<2>".into(),
            },
        );
        assert!(page.contains("<title>Paracloud shop</title>"));
        assert!(page.contains("web: web.1 · api: api&lt;2&gt; · kv: ok"));
        assert!(page.contains("Sandbox bucket"));
        assert!(page.contains("9.90 €"));
        assert!(page.contains(">7<"));
    }

    #[test]
    fn error_page_names_the_tier() {
        let page = render_error("web.1", "kv", "connection refused");
        assert!(page.contains("kv tier failed: connection refused"));
    }
}
