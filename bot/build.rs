//! `sqlx::migrate!` embeds bot/migrations at compile time, but cargo only tracks the files rustc
//! reads itself: without this a new migration file would not rebuild the bot (and the dev watch
//! would restart it without the migration).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
