-- Export jobs and schedules keep their search filters as a JSON object (the
-- admin service's `Filters`: one value alone, several as an array;
-- `success` a boolean, `min_response_time_ms` a number),
-- no longer as a query string that every reader had to parse again.
-- Existing rows are converted: their query strings were written by the
-- service (form encoding: `+` for a space, `%XX` for other bytes) and were
-- checked when they were stored. Admin instances of older releases must be
-- stopped before this runs (docs/operations.md, Upgrading): they read `query`.

CREATE FUNCTION pg_temp.form_decode(t text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(convert_from(string_agg(
               CASE WHEN m[1] IS NOT NULL THEN decode(substr(m[1], 2), 'hex')
                    ELSE convert_to(m[2], 'UTF8') END,
               ''::bytea ORDER BY n), 'UTF8'), '')
    FROM regexp_matches(replace(t, '+', ' '), '(%[0-9A-Fa-f]{2})|([^%]+)', 'g')
         WITH ORDINALITY AS r(m, n)
$$;

CREATE FUNCTION pg_temp.query_filters(query text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(name,
               CASE WHEN cardinality(vals) = 1 THEN vals[1] ELSE to_jsonb(vals) END),
           '{}'::jsonb)
    FROM (
        SELECT name, array_agg(
                   CASE name
                       WHEN 'success' THEN to_jsonb(value::boolean)
                       WHEN 'min_response_time_ms' THEN to_jsonb(value::double precision)
                       ELSE to_jsonb(value)
                   END ORDER BY n) AS vals
        FROM (
            SELECT pg_temp.form_decode(split_part(pair, '=', 1)) AS name,
                   pg_temp.form_decode(substr(pair, length(split_part(pair, '=', 1)) + 2)) AS value,
                   n
            FROM unnest(string_to_array(query, '&')) WITH ORDINALITY AS p(pair, n)
            WHERE pair <> ''
        ) AS pairs
        GROUP BY name
    ) AS named
$$;

ALTER TABLE auditline.export_jobs ADD COLUMN filters jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT export_jobs_filters_object CHECK (jsonb_typeof(filters) = 'object');
UPDATE auditline.export_jobs SET filters = pg_temp.query_filters(query);
ALTER TABLE auditline.export_jobs DROP COLUMN query;

ALTER TABLE auditline.export_schedules ADD COLUMN filters jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT export_schedules_filters_object CHECK (jsonb_typeof(filters) = 'object');
UPDATE auditline.export_schedules SET filters = pg_temp.query_filters(query);
ALTER TABLE auditline.export_schedules DROP COLUMN query;
