//! Helpers for the console tests: a browser's sign-in and form posts over plain HTTP, with the
//! session cookie carried by hand.

use crate::http::{Answer, Http};

/// An urlencoded form body.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

/// A body as text.
pub fn html(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).to_string()
}

/// The value of the hidden input `name` in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker).nth(1).unwrap_or_else(|| panic!("no {name} in {html}")).split('"').next().unwrap().to_string()
}

/// Signs in over plain HTTP as a browser would; returns the `Cookie` header value.
pub async fn sign_in(http: &Http, key: &str) -> String {
    let page = http.raw("GET", "/console/login", None, None, vec![]).await;
    assert_eq!(page.status, 200);
    let token = hidden(&html(&page), "_login");
    let body = form(&[("_login", &token), ("api_key", key)]);
    let a = http.raw("POST", "/console/login", None, Some("application/x-www-form-urlencoded"), body).await;
    assert_eq!(a.status, 303, "{}", html(&a));
    assert_eq!(a.headers["location"], "/console/contacts");
    let set = a.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains(key), "the key is sealed, not stored in clear: {set}");
    set.split(';').next().unwrap().to_string()
}

/// A GET with the session cookie.
pub async fn get(http: &Http, cookie: &str, path: &str) -> Answer {
    http.raw_with_headers("GET", path, &[("cookie", cookie.to_string())], None, vec![]).await
}

/// A form POST with the session cookie.
pub async fn post(http: &Http, cookie: &str, path: &str, pairs: &[(&str, &str)]) -> Answer {
    let headers = [("cookie", cookie.to_string())];
    http.raw_with_headers("POST", path, &headers, Some("application/x-www-form-urlencoded"), form(pairs)).await
}

/// The `Location` of a redirect.
pub fn location(a: &Answer) -> String {
    a.headers["location"].to_str().unwrap().to_string()
}

/// The `name=value` pairs a response sets, by cookie name.
pub fn set_cookies(a: &Answer) -> std::collections::HashMap<String, String> {
    a.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .map(|c| (c.split('=').next().unwrap().to_string(), c))
        .collect()
}
