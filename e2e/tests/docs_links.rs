//! Every relative link in README.md and docs/*.md leads somewhere: the file it names exists, and
//! the `#section` it names is a heading of that page, under the anchor GitHub gives it. Pages
//! move and sections are renamed; a link that silently stopped working is found here, not by a
//! reader. Links are read with a Markdown parser, so code spans and code blocks, which only look
//! like links, are left alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e lives in the workspace").to_path_buf()
}

/// README.md and every page under docs/.
fn documentation(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    let mut docs: Vec<PathBuf> =
        docs.map(|entry| entry.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// A link of a page: where it points and on which line it is written.
struct Link {
    line: usize,
    dest: String,
}

/// What one page offers and asks for: its headings' anchors and its links (images included).
struct Page {
    anchors: BTreeSet<String>,
    links: Vec<Link>,
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

fn read_page(path: &Path) -> Page {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut anchors = BTreeSet::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for (event, range) in Parser::new_ext(&text, options()).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let slug = github_anchor(&heading.take().unwrap_or_default());
                // GitHub numbers repeated headings: `name`, `name-1`, `name-2`, ...
                let mut anchor = slug.clone();
                let mut n = 0;
                while !anchors.insert(anchor.clone()) {
                    n += 1;
                    anchor = format!("{slug}-{n}");
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push(Link { line: line_of(range.start), dest: dest_url.to_string() })
            }
            _ => {}
        }
    }
    Page { anchors, links }
}

/// The anchor GitHub gives a heading: lower case, spaces to hyphens, and every character that
/// is not a letter, a digit, a hyphen or an underscore dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// An address with a scheme (`https:`, `mailto:`) is not ours to check.
fn is_external(dest: &str) -> bool {
    dest.split(['/', '#', '?']).next().is_some_and(|first| first.contains(':'))
}

/// Every broken relative link of `pages`, as `page:line: link (why)`; and how many were checked.
fn broken_links(root: &Path, pages: &[PathBuf]) -> (Vec<String>, usize) {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page_path in pages {
        let page = read_page(page_path);
        let name = page_path.strip_prefix(root).unwrap_or(page_path).display().to_string();
        for link in page.links.iter().filter(|l| !is_external(&l.dest)) {
            checked += 1;
            let (file, fragment) = match link.dest.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (link.dest.as_str(), None),
            };
            let target = if file.is_empty() {
                page_path.clone()
            } else {
                page_path.parent().expect("a page is in a folder").join(file)
            };
            let problem = if !target.exists() {
                Some("no such file".to_string())
            } else if let Some(fragment) = fragment {
                if target.extension().is_none_or(|e| e != "md") {
                    Some("a section of a file that is not Markdown".to_string())
                } else if !read_page(&target).anchors.contains(fragment) {
                    Some(format!("no heading with the anchor #{fragment}"))
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(problem) = problem {
                broken.push(format!("{name}:{}: {} ({problem})", link.line, link.dest));
            }
        }
    }
    (broken, checked)
}

#[test]
fn every_relative_link_and_section_anchor_in_the_readme_and_docs_resolves() {
    let root = repo_root();
    let pages = documentation(&root);
    assert!(pages.len() >= 5, "README.md and the docs pages: {pages:?}");
    let (broken, checked) = broken_links(&root, &pages);
    assert!(broken.is_empty(), "links that lead nowhere:\n{}", broken.join("\n"));
    // The pages link to each other and to their sections throughout: finding few links would
    // mean the parse went wrong, not that the links are right.
    assert!(checked >= 100, "only {checked} relative links found");
}

/// The check above can fail: a missing page, a missing section and a link to a section of a
/// file that has none are each reported, with their line; what resolves, including a repeated
/// heading's numbered anchor and a link inside a table, is not; code is not a link.
#[test]
fn a_link_to_a_missing_page_or_section_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(root.join("shown.png"), b"").unwrap();
    std::fs::write(
        root.join("docs/guide.md"),
        "# Guide\n\n## What the worker's batch does\n\n## Notes\n\n## Notes\n\nBack to [the start](../README.md#start).\n",
    )
    .unwrap();
    std::fs::write(
        root.join("README.md"),
        "# Start\n\n\
         [ok](docs/guide.md#what-the-workers-batch-does) and [repeated](docs/guide.md#notes-1) \
         and [here](#start) and ![image](shown.png) and [web](https://example.com/x#y).\n\n\
         | a | b |\n|---|---|\n| [in a table](docs/guide.md) | [missing page](docs/gone.md) |\n\n\
         [missing section](docs/guide.md#no-such-section)\n\n\
         [section of a picture](shown.png#top)\n\n\
         `[not a link](nowhere.md)`\n\n```\n[not a link either](nowhere.md)\n```\n",
    )
    .unwrap();
    let (broken, checked) = broken_links(root, &documentation(root));
    assert_eq!(
        broken,
        [
            "README.md:7: docs/gone.md (no such file)",
            "README.md:9: docs/guide.md#no-such-section (no heading with the anchor #no-such-section)",
            "README.md:11: shown.png#top (a section of a file that is not Markdown)",
        ]
    );
    assert_eq!(checked, 9, "every relative link is checked, the external one is not");
}
