//! Input rules for accounts, each returning the cleaned value or a 400 naming the field.

use platform::ApiError;

/// Passwords: 8 to 128 characters, no composition rules (OWASP ASVS 2.1).
pub fn password(field: &str, value: &str) -> Result<(), ApiError> {
    let len = value.chars().count();
    if !(8..=128).contains(&len) {
        return Err(ApiError::invalid(field, "password must be 8 to 128 characters long"));
    }
    Ok(())
}

/// Emails are trimmed and lower-cased; the shape is checked, not the mailbox. Lengths are in
/// characters, as the OpenAPI document's `pattern` and `maxLength` count them.
pub fn email(value: &str) -> Result<String, ApiError> {
    let email = value.trim().to_lowercase();
    let bad = || ApiError::invalid("email", "email must look like name@example.com");
    let chars = |s: &str| s.chars().count();
    if chars(&email) > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let domain_ok = domain.contains('.') && !domain.contains('@') && domain.split('.').all(|label| !label.is_empty() && chars(label) <= 63);
    if local.is_empty() || chars(local) > 64 || !domain_ok {
        return Err(bad());
    }
    Ok(email)
}

/// Usernames: 3 to 24 of `[A-Za-z0-9_]`, unique regardless of case.
pub fn username(value: &str) -> Result<String, ApiError> {
    let ok = (3..=24).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(ApiError::invalid("username", "username must be 3 to 24 letters, digits or underscores"));
    }
    Ok(value.to_owned())
}

/// Device ids (guest sign-in): 8 to 128 printable ASCII characters without spaces.
pub fn device_id(value: &str) -> Result<&str, ApiError> {
    let ok = (8..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::invalid("device_id", "device_id must be 8 to 128 printable characters without spaces"));
    }
    Ok(value)
}

/// Display names: 1 to 32 characters after trimming, no control characters.
pub fn display_name(value: &str) -> Result<String, ApiError> {
    let name = value.trim();
    let len = name.chars().count();
    if !(1..=32).contains(&len) || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("display_name", "display_name must be 1 to 32 characters without control characters"));
    }
    Ok(name.to_owned())
}

/// Locales: a BCP 47 tag such as `en`, `pt-BR` or `zh-Hant-TW`.
pub fn locale(value: &str) -> Result<String, ApiError> {
    let mut parts = value.split('-');
    let language_ok = parts.next().is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    let rest: Vec<&str> = parts.collect();
    let rest_ok = rest.len() <= 3 && rest.iter().all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !language_ok || !rest_ok {
        return Err(ApiError::invalid("locale", "locale must be a language tag such as en, pt-BR or zh-Hant-TW"));
    }
    Ok(value.to_owned())
}

/// Asset ids (avatars): the UUID an upload was given.
pub fn asset_id(value: &str) -> Result<String, ApiError> {
    uuid::Uuid::try_parse(value)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| ApiError::invalid("avatar_asset_id", "avatar_asset_id must be an asset id (a UUID)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email("  Ana@Example.COM ").expect("valid"), "ana@example.com");
        for bad in ["", "ana", "ana@", "@example.com", "ana@example", "a na@example.com", "ana@@example.com", "ana@example..com"] {
            assert!(email(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn usernames_follow_the_rules() {
        assert!(username("ana_99").is_ok());
        for bad in ["ab", "a".repeat(25).as_str(), "ana-99", "ana 99", "ánä"] {
            assert!(username(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn passwords_are_counted_in_characters() {
        assert!(password("password", "1234567").is_err());
        assert!(password("password", "12345678").is_ok());
        assert!(password("password", &"é".repeat(128)).is_ok());
        assert!(password("password", &"x".repeat(129)).is_err());
    }

    #[test]
    fn profile_fields() {
        assert_eq!(display_name("  Ana the Bold ").expect("valid"), "Ana the Bold");
        assert!(display_name("   ").is_err());
        assert!(display_name("bell\u{7}").is_err());
        assert!(locale("pt-BR").is_ok() && locale("zh-Hant-TW").is_ok() && locale("en").is_ok());
        assert!(locale("english").is_err() && locale("en_US").is_err() && locale("").is_err());
        assert!(asset_id("0190c6a2-7d1e-7c3b-9a4e-3f2b1c0d9e8f").is_ok());
        assert!(asset_id("../etc/passwd").is_err());
        assert!(device_id("abcdefgh").is_ok() && device_id("short").is_err() && device_id("has space 123").is_err());
    }
}
