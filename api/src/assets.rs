//! The dashboard's static files, compiled into the binary so it runs with nothing beside it.

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `api/assets/` that is served; `/` is `index.html`, the rest are
/// `/assets/{name}`. The page's scripts are ES modules, which browsers only run when served
/// with a JavaScript content type.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/dashboard.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../assets/api.js"),
    },
    Asset {
        name: "table.js",
        content_type: JS,
        body: include_bytes!("../assets/table.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_bytes!("../assets/chart.js"),
    },
    Asset {
        name: "panels.js",
        content_type: JS,
        body: include_bytes!("../assets/panels.js"),
    },
];

pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}
