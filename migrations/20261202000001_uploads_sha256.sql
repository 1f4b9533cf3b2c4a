-- The SHA-256 of the plain bytes read from the source, for every destination: what `verify`
-- and restore compare against. `content_hash` is the destination's own hash, in its own
-- notation (Dropbox content hash, S3 checksum, a folder's read-back SHA-256); rows from before
-- this migration hold Dropbox-style content hashes there and no sha256.
alter table uploads add column sha256 text;
