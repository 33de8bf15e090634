//! How one page leads to the next, per Ocean Custom's pagination types (its
//! `http_server/handlers.py`), as a pure function of the settings and the page's answer.

use port_agent_core::text::value_text;
use port_agent_core::vendor_http::link_with_rel;
use serde_json::Value;

use super::settings::{PaginationType, Settings};

/// One page's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub url: String,
    pub query: Vec<(String, String)>,
    /// 1 for the first page: errors name it.
    pub number: u64,
    /// The page, offset or cursor this request carries.
    position: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Page(u64),
    Offset(u64),
    Cursor(Option<String>),
    /// The URL says it all (next links).
    Url,
}

/// Dotted path into objects (`meta.after_cursor`), as Ocean Custom reads `cursorPath` and
/// `hasMorePath`: `None` where a step is missing or not an object.
pub fn nested<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |value, key| value.as_object()?.get(key))
        .filter(|v| !v.is_null())
}

/// Python's truthiness, which Ocean Custom's checks use.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// The first page's request for `url` with the selector's `query`.
pub fn first(settings: &Settings, url: &str, query: &[(String, String)]) -> PageRequest {
    let position = match settings.pagination {
        PaginationType::Page => Position::Page(settings.start_page),
        PaginationType::Offset => Position::Offset(0),
        PaginationType::Cursor => Position::Cursor(None),
        PaginationType::None | PaginationType::NextLink | PaginationType::HeaderLink => {
            Position::Url
        }
    };
    request(settings, url.to_owned(), query.to_vec(), 1, position)
}

fn request(
    settings: &Settings,
    url: String,
    mut query: Vec<(String, String)>,
    number: u64,
    position: Position,
) -> PageRequest {
    let size = (settings.size_param.clone(), settings.page_size.to_string());
    match &position {
        Position::Page(n) | Position::Offset(n) => {
            query.push((settings.pagination_param.clone(), n.to_string()));
            query.push(size);
        }
        Position::Cursor(cursor) => {
            query.push(size);
            if let Some(cursor) = cursor {
                query.push((settings.pagination_param.clone(), cursor.clone()));
            }
        }
        Position::Url => {}
    }
    PageRequest {
        url,
        query,
        number,
        position,
    }
}

/// Whether a page object says more follow: `hasMorePath` (truthy: yes), then `lastPagePath`
/// (truthy: no), then the type's own guess.
fn dict_has_next(settings: &Settings, page: &Value, guess: impl Fn(&Value) -> bool) -> bool {
    if let Some(value) = settings
        .has_more_path
        .as_deref()
        .and_then(|p| nested(page, p))
    {
        return truthy(Some(value));
    }
    if let Some(value) = settings
        .last_page_path
        .as_deref()
        .and_then(|p| nested(page, p))
    {
        return !truthy(Some(value));
    }
    guess(page)
}

/// The request after `current`, whose answer was `page` (with its `Link` header), that gave
/// `items` items; `None` when it was the last. `query` is the selector's own.
pub fn next(
    settings: &Settings,
    current: &PageRequest,
    page: &Value,
    link_header: Option<&str>,
    items: usize,
    query: &[(String, String)],
) -> Option<PageRequest> {
    let full_page = |p: &Value| {
        p.as_array()
            .is_some_and(|a| a.len() as u64 >= settings.page_size)
    };
    let number = current.number + 1;
    let same_url = |position| {
        request(
            settings,
            current.url.clone(),
            query.to_vec(),
            number,
            position,
        )
    };
    match (&settings.pagination, &current.position) {
        (PaginationType::Page, Position::Page(n)) => {
            let more = if page.is_object() {
                dict_has_next(settings, page, |p| {
                    nested(p, "next_page").is_some()
                        || nested(p, "next").is_some()
                        || truthy(nested(p, "hasMore"))
                })
            } else {
                full_page(page)
            };
            more.then(|| same_url(Position::Page(n + 1)))
        }
        (PaginationType::Offset, Position::Offset(offset)) => {
            let more = if page.is_object() {
                match settings.has_more_path.as_deref() {
                    Some(path) => truthy(nested(page, path)),
                    // Ocean goes on unless the page says otherwise; an empty page ends it
                    // here (Ocean would ask for empty pages for ever).
                    None => {
                        let said = nested(page, "has_more").or_else(|| nested(page, "hasMore"));
                        said.is_none_or(|v| truthy(Some(v))) && items > 0
                    }
                }
            } else {
                full_page(page)
            };
            more.then(|| same_url(Position::Offset(offset + settings.page_size)))
        }
        (PaginationType::Cursor, Position::Cursor(_)) => {
            if !page.is_object() {
                return None;
            }
            let cursor = match settings.cursor_path.as_deref() {
                Some(path) => nested(page, path),
                None => ["next_cursor", "cursor", "meta.after_cursor", "links.next"]
                    .iter()
                    .map(|p| nested(page, p))
                    .find(|v| truthy(*v))
                    .flatten(),
            };
            let more = match settings.has_more_path.as_deref() {
                Some(path) => truthy(nested(page, path)),
                None => truthy(
                    nested(page, "has_more")
                        .or_else(|| nested(page, "hasMore"))
                        .or_else(|| nested(page, "meta.has_more")),
                ),
            };
            if !truthy(cursor) || !more {
                return None;
            }
            Some(same_url(Position::Cursor(cursor.map(value_text))))
        }
        (PaginationType::NextLink, _) => {
            let path = settings.next_link_path.as_str();
            let link = page
                .as_object()
                .and_then(|o| o.get(path))
                .or_else(|| path.contains('.').then(|| nested(page, path)).flatten())
                .filter(|v| truthy(Some(v)))?;
            let url = resolve(&settings.base_url, &current.url, &value_text(link));
            Some(request(settings, url, Vec::new(), number, Position::Url))
        }
        (PaginationType::HeaderLink, _) => {
            let link = link_with_rel(link_header?, &settings.header_link_rel)?;
            let url = resolve(&settings.base_url, &current.url, &link);
            Some(request(settings, url, Vec::new(), number, Position::Url))
        }
        _ => None,
    }
}

/// A next link as an absolute URL: absolute as given; `/path` on the base URL's origin;
/// otherwise beside the current URL. (Ocean uses it as given, so a relative link fails there.)
fn resolve(base_url: &str, current: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        return link.to_owned();
    }
    let origin = |url: &str| -> String {
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let end = url[after_scheme..]
            .find('/')
            .map_or(url.len(), |i| after_scheme + i);
        url[..end].to_owned()
    };
    if link.starts_with('/') {
        return format!("{}{link}", origin(base_url));
    }
    let folder = current
        .split(['?', '#'])
        .next()
        .unwrap_or(current)
        .rsplit_once('/')
        .map_or(current, |(folder, _)| folder);
    format!("{folder}/{link}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(config: Value) -> Settings {
        let mut config = config;
        config["baseUrl"] = json!("https://api.example.com/v1");
        Settings::from_config(config.as_object().unwrap()).unwrap()
    }

    fn walk(settings: &Settings, pages: &[(Value, Option<&str>, usize)]) -> Vec<PageRequest> {
        let mut requests = vec![first(
            settings,
            "https://api.example.com/v1/items",
            &[("q".into(), "x".into())],
        )];
        for (page, link, items) in pages {
            let current = requests.last().unwrap();
            match next(
                settings,
                current,
                page,
                *link,
                *items,
                &[("q".into(), "x".into())],
            ) {
                Some(request) => requests.push(request),
                None => break,
            }
        }
        requests
    }

    fn query_of(request: &PageRequest) -> Vec<String> {
        request
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[test]
    fn page_pagination_follows_the_page_object_or_full_arrays() {
        let page =
            settings(json!({"paginationType": "page", "pageSize": 2, "hasMorePath": "meta.more"}));
        let requests = walk(
            &page,
            &[
                (json!({"meta": {"more": true}}), None, 2),
                (json!({"meta": {"more": false}}), None, 2),
            ],
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(query_of(&requests[1]), ["q=x", "page=2", "size=2"]);
        let arrays = settings(json!({"paginationType": "page", "pageSize": 2, "startPage": "0"}));
        let requests = walk(&arrays, &[(json!([1, 2]), None, 2), (json!([3]), None, 1)]);
        assert_eq!(
            requests
                .iter()
                .map(|r| query_of(r)[1].clone())
                .collect::<Vec<_>>(),
            ["page=0", "page=1"]
        );
        // lastPagePath: a true value ends it.
        let last = settings(json!({"paginationType": "page", "lastPagePath": "last"}));
        assert_eq!(walk(&last, &[(json!({"last": true}), None, 1)]).len(), 1);
        // Neither path nor Ocean's guesses: one page, as in Ocean.
        assert_eq!(walk(&last, &[(json!({"items": []}), None, 0)]).len(), 1);
    }

    #[test]
    fn offset_pagination_stops_on_has_more_or_an_empty_page() {
        let offset = settings(json!({"paginationType": "offset", "pageSize": "10"}));
        let requests = walk(
            &offset,
            &[
                (json!({"data": [1]}), None, 10),
                (json!({"data": [], "x": 1}), None, 0),
            ],
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(query_of(&requests[1]), ["q=x", "offset=10", "limit=10"]);
        assert_eq!(
            walk(&offset, &[(json!({"hasMore": false}), None, 10)]).len(),
            1
        );
    }

    #[test]
    fn cursor_pagination_needs_a_cursor_and_has_more() {
        let cursor = settings(
            json!({"paginationType": "cursor", "cursorPath": "response_metadata.next_cursor", "hasMorePath": "has_more", "paginationParam": "after"}),
        );
        let requests = walk(
            &cursor,
            &[
                (
                    json!({"has_more": true, "response_metadata": {"next_cursor": "c2"}}),
                    None,
                    1,
                ),
                (
                    json!({"has_more": true, "response_metadata": {"next_cursor": ""}}),
                    None,
                    1,
                ),
            ],
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(query_of(&requests[0]), ["q=x", "limit=100"]);
        assert_eq!(query_of(&requests[1]), ["q=x", "limit=100", "after=c2"]);
        let guessed = settings(json!({"paginationType": "cursor"}));
        let requests = walk(
            &guessed,
            &[
                (
                    json!({"meta": {"after_cursor": 7, "has_more": true}}),
                    None,
                    1,
                ),
                (json!({"meta": {"has_more": false}}), None, 1),
            ],
        );
        assert_eq!(query_of(&requests[1]).last().unwrap(), "cursor=7");
        assert_eq!(requests.len(), 2);
    }

    #[test]
    fn next_links_and_link_headers_are_followed_as_given_or_resolved() {
        let next_link =
            settings(json!({"paginationType": "next_link", "nextLinkPath": "paging.next"}));
        let requests = walk(
            &next_link,
            &[
                (json!({"paging": {"next": "/v1/items?page=2"}}), None, 1),
                (json!({"paging": {}}), None, 1),
            ],
        );
        assert_eq!(requests[1].url, "https://api.example.com/v1/items?page=2");
        assert!(requests[1].query.is_empty());
        let odata = settings(json!({"paginationType": "next_link"}));
        let requests = walk(
            &odata,
            &[(
                json!({"@odata.nextLink": "https://other.example.com/p2"}),
                None,
                1,
            )],
        );
        assert_eq!(requests[1].url, "https://other.example.com/p2");
        let header = settings(json!({"paginationType": "header_link"}));
        let link = r#"<https://api.example.com/v1/items?page=3>; rel="next", <https://api.example.com/v1/items?page=9>; rel="last""#;
        let requests = walk(
            &header,
            &[
                (json!([1]), Some(link), 1),
                (json!([2]), Some(r#"<x>; rel="prev""#), 1),
            ],
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].url, "https://api.example.com/v1/items?page=3");
        assert_eq!(requests[1].number, 2);
    }
}
