//! The login page.

use maud::{html, Markup};

use super::{layout, Section};

/// The form; `csrf` is the anonymous session's token, `error` what went wrong last time.
pub fn page(csrf: &str, next: &str, error: Option<&str>, password_login: bool) -> Markup {
    layout(
        "Log in",
        Section::None,
        None,
        html! {
            @if let Some(error) = error {
                p class="error" role="alert" { (error) }
            }
            @if password_login {
                form class="login" method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    p {
                        label for="user" { "User" }
                        input id="user" name="user" type="text" autocomplete="username" required autofocus maxlength="64";
                    }
                    p {
                        label for="password" { "Password" }
                        input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024";
                    }
                    p { button type="submit" { "Log in" } }
                }
            } @else {
                p class="notice" { "Password login is off here: open the console through your single sign-on proxy." }
            }
        },
    )
}
