-- legacy-version: 1
-- Accounts (issued by the gateway). Services key everything by the token's user id (text),
-- so a gRPC-only caller with a minted token works without an account row.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    username      text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
