-- A full listing of a source (the first, or again after Drive refused the page token) has a
-- generation; each file it lists is stamped with it, and when the listing ends, a file it did
-- not list is gone from Drive (deleted while no token was followed) and is marked removed.
alter table gdrive_sources add column listing integer not null default 0;
alter table gdrive_files add column listed integer not null default 0;
