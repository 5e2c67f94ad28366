//! The api's JSON bodies, shared by shop-api (which writes them) and shop-web (which reads them).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub price_cents: u32,
}

/// The fixed catalogue the api serves.
pub fn catalogue() -> Vec<Product> {
    [
        (1, "Paper cloud", 450),
        (2, "Elastic band", 120),
        (3, "Sandbox bucket", 990),
        (4, "Namespace tag", 300),
    ]
    .into_iter()
    .map(|(id, name, price_cents)| Product {
        id,
        name: name.into(),
        price_cents,
    })
    .collect()
}

/// `GET /api/products`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Products {
    pub products: Vec<Product>,
    /// The kv counter `visits` after this request's increment.
    pub visits: i64,
    pub work: u64,
    pub checksum: u64,
    /// Hostname of the api instance that answered.
    pub served_by: String,
}

/// `GET /api/kv/{key}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// Every error answer of the api.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// The tier that failed (`api` or `kv`); absent when nothing failed (a missing key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}
