//! `ListContacts` search over blind indexes. Values are stored encrypted, so a query is an exact
//! match on something the store can hash: a whole e-mail address, a phone number, or name tokens
//! (each token of the query must be a token of the first or last name). Case, spaces and
//! punctuation around the value do not matter; substrings do not match.

use uuid::Uuid;

use sea_orm::sea_query::{Expr, ExprTrait as _, Func, Query};
use sea_orm::{ColumnTrait, Condition};

use carnet_kit::keystore::BlindIndex;

use crate::entity::{contact, contact_token};
use crate::sealed::{email_hash, phone_hash, token_hash, tokens};
use crate::validate::{normalize_email, normalize_phone};

/// Most tokens a query may hold.
pub const MAX_QUERY_TOKENS: usize = 8;

/// What a query asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Search {
    All,
    Email(String),
    Phone(String),
    /// Every one of these name tokens (normalised), in the first or last name.
    Names(Vec<String>),
}

impl Search {
    /// Reads a query: an e-mail address when it is one, a phone number when it is one (with its
    /// country code), name tokens otherwise.
    pub fn parse(query: &str) -> Search {
        let query = query.trim();
        if query.is_empty() {
            return Search::All;
        }
        if query.contains('@')
            && let Ok(email) = normalize_email(query)
        {
            return Search::Email(email);
        }
        if (query.starts_with('+') || query.starts_with("00"))
            && let Ok(phone) = normalize_phone(query)
        {
            return Search::Phone(phone);
        }
        Search::Names(tokens(query).into_iter().take(MAX_QUERY_TOKENS).collect())
    }

    /// The condition on `contacts` of this search in `tenant_id`.
    pub fn condition(&self, index: &BlindIndex, tenant_id: Uuid) -> Option<Condition> {
        match self {
            Search::All => None,
            Search::Email(email) => {
                Some(Condition::all().add(contact::Column::EmailIndex.eq(email_hash(index, email))))
            }
            Search::Phone(phone) => {
                Some(Condition::all().add(contact::Column::PhoneIndex.eq(phone_hash(index, phone))))
            }
            // A query without a single letter or digit matches nothing.
            Search::Names(names) if names.is_empty() => Some(Condition::all().add(Expr::val(1).eq(0))),
            Search::Names(names) => {
                let hashes: Vec<String> = names.iter().map(|t| token_hash(index, t)).collect();
                // Contacts holding every token: one row per (contact, token) under the primary key.
                let holders = Query::select()
                    .column(contact_token::Column::ContactId)
                    .from(contact_token::Entity)
                    .and_where(Expr::col(contact_token::Column::TenantId).eq(tenant_id))
                    .and_where(Expr::col(contact_token::Column::Hash).is_in(hashes))
                    .group_by_col(contact_token::Column::ContactId)
                    .and_having(Expr::expr(Func::count(Expr::col(contact_token::Column::Hash))).eq(names.len() as i64))
                    .to_owned();
                Some(Condition::all().add(contact::Column::Id.in_subquery(holders)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_queries_read_as_email_phone_or_name_tokens() {
        assert_eq!(Search::parse("  "), Search::All);
        assert_eq!(Search::parse(" Ada@Example.ORG "), Search::Email("ada@example.org".into()));
        assert_eq!(Search::parse("+44 20 7946 0958"), Search::Phone("+442079460958".into()));
        assert_eq!(Search::parse("0044 20 7946 0958"), Search::Phone("+442079460958".into()));
        assert_eq!(Search::parse("Lovelace"), Search::Names(vec!["lovelace".into()]));
        assert_eq!(Search::parse("ada LOVELACE"), Search::Names(vec!["ada".into(), "lovelace".into()]));
        assert_eq!(Search::parse("user3@"), Search::Names(vec!["user3".into()]), "not an address: tokens");
        assert_eq!(Search::parse("%"), Search::Names(vec![]));
    }
}
