//! Media upload and download.

mod common;

use common::TestServer;

#[tokio::test]
async fn upload_then_download_authenticated_and_legacy() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let png = b"\x89PNG\r\n\x1a\nfake image bytes".to_vec();
    let resp = s
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename=cat.png", s.base))
        .bearer_auth(&alice.token)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let uri = body["content_uri"].as_str().unwrap().to_owned();
    let (server, media_id) = uri.strip_prefix("mxc://").unwrap().split_once('/').unwrap();
    assert_eq!(server, "porch.test");

    let url = format!("{}/_matrix/client/v1/media/download/{server}/{media_id}", s.base);
    let resp = s.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "authenticated media needs a token");
    let resp = s.http.get(&url).bearer_auth(&alice.token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("inline"));
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);

    // The unauthenticated legacy path serves nothing, with a token or without.
    for token in [None, Some(&alice.token)] {
        let mut req = s.http.get(format!("{}/_matrix/media/v3/download/{server}/{media_id}", s.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "legacy download");
        assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["errcode"], "M_NOT_FOUND");
    }
    let resp = s
        .http
        .get(format!("{}/_matrix/client/v1/media/thumbnail/{server}/{media_id}?width=32&height=32", s.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // HTML is never served inline.
    let resp = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&alice.token)
        .header("content-type", "text/html")
        .body("<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    let uri = resp.json::<serde_json::Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let media_id = uri.rsplit('/').next().unwrap();
    let resp = s
        .http
        .get(format!("{}/_matrix/client/v1/media/download/porch.test/{media_id}", s.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));

    for (path, code) in [("porch.test/doesnotexist", 404), ("other.server/abc", 404), ("porch.test/..%2F..%2Fetc", 404)]
    {
        let resp = s
            .http
            .get(format!("{}/_matrix/client/v1/media/download/{path}", s.base))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
    let (status, config) = s.get("/_matrix/client/v1/media/config", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert!(config["m.upload.size"].as_u64().unwrap() >= 1024 * 1024);
}

#[tokio::test]
async fn upload_over_the_limit_is_refused() {
    let s = TestServer::start_with(common::Options {
        env: vec![("PORCH_LIMITS__MAX_UPLOAD_BYTES".into(), "100000".into())],
    })
    .await;
    let alice = s.register("alice").await;
    let resp = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&alice.token)
        .body(vec![0u8; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_TOO_LARGE");
}
