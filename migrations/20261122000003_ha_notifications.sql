-- Persistent notifications offsite has raised in Home Assistant and not dismissed yet, with a
-- fingerprint of what they said, so a restart neither repeats nor forgets them.
create table ha_notifications (
    notification_id text primary key,
    fingerprint     text    not null,
    created_at      integer not null
);
