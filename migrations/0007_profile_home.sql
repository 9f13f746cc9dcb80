-- Migration 0007: profiles are found by their Hermes home. Forward-only;
-- applied in one transaction by src/lib/migrate.c, which sets user_version 7.
--
-- A Hermes home belongs to one profile: adding a profile, setting a home and
-- importing a root each look up whether another profile already has the home
-- (src/lib/ledger.c tl__home_owner). Without an index that is a scan of every
-- profile per profile, quadratic in an import of a whole root (10,000 profiles:
-- 7.8 s instead of 2.5 s). Not UNIQUE: ledgers made before the rule may hold a
-- home twice, and a migration must not fail on them; the C code keeps the rule.
CREATE INDEX profile_home ON profile(home) WHERE home IS NOT NULL;
