//! The web chat UI at `/`: the built assets of `clients/web` (`web.dir`), with `index.html`
//! for any other path so that the page's own routes load; when the assets are missing, `/` is
//! a page that says how to build them (the server runs without them).
use std::path::Path;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use tower_http::services::{ServeDir, ServeFile};

use crate::settings::WebSettings;

/// Adds the UI to `app` as its fallback (after every API route).
pub fn mount<S: Clone + Send + Sync + 'static>(app: Router<S>, web: &WebSettings) -> Router<S> {
    if !web.enabled {
        return app;
    }
    let index = web.dir.join("index.html");
    if is_built(&web.dir) {
        tracing::info!(dir = %web.dir.display(), "serving the web UI at /");
        app.fallback_service(ServeDir::new(&web.dir).fallback(ServeFile::new(index)))
    } else {
        tracing::warn!(
            dir = %web.dir.display(),
            "the web UI is not built: `(cd clients/typescript && npm ci && npm run build) && \
             cd clients/web && npm ci && npm run build`"
        );
        app.fallback(not_built)
    }
}

fn is_built(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

async fn not_built(uri: Uri) -> Response {
    if uri.path() != "/" && uri.path() != "/index.html" {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    Html(NOT_BUILT).into_response()
}

const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Deep Recall</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}code,pre{background:#f3f3f3;border-radius:4px;padding:.1rem .3rem}pre{padding:.8rem}</style>
</head><body>
<h1>Deep Recall is running</h1>
<p>The API is up: GraphQL at <a href="/graphql"><code>/graphql</code></a>, OpenAI-compatible REST under
<code>/v1</code>, MCP at <code>/mcp</code>, <a href="/health"><code>/health</code></a>.</p>
<p>The web chat UI is not built. Build it from a checkout and restart the server:</p>
<pre>(cd clients/typescript &amp;&amp; npm ci &amp;&amp; npm run build)
cd clients/web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>The server serves it from <code>clients/web/dist</code> (relative to where it runs), or from the
directory set as <code>web.dir</code> in the settings (<code>DEEP_RECALL__WEB__DIR</code>).</p>
</body></html>
"#;
