-- Exact row counts of every table of the ivrs schema, one "table|rows" line each
-- (psql -XAt -f table-counts.sql). Used by the restore drill in docs/deploy.md.
-- Change 'public' if ivrs lives in another schema (search_path in DATABASE_URL).
SELECT table_name,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM %I.%I', table_schema, table_name),
                           false, true, '')))[1]::text::bigint AS rows
FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
ORDER BY table_name;
