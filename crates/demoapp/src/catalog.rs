//! The product list: fixed, as a shop's catalogue changes far less often than carts and orders
//! (and a drill is about the data that changes).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Product {
    pub id: &'static str,
    pub name: &'static str,
    pub price_cents: u64,
}

pub const PRODUCTS: &[Product] = &[
    Product {
        id: "espresso-beans",
        name: "Espresso beans, 1 kg",
        price_cents: 2490,
    },
    Product {
        id: "grinder",
        name: "Burr grinder",
        price_cents: 12900,
    },
    Product {
        id: "kettle",
        name: "Gooseneck kettle",
        price_cents: 5900,
    },
    Product {
        id: "filter-papers",
        name: "Filter papers (100)",
        price_cents: 450,
    },
    Product {
        id: "mug",
        name: "Stoneware mug",
        price_cents: 1600,
    },
];

pub fn find(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.id == id)
}
