-- Keep the visibility map of studies and annotations fresh.
--
-- A study search walks idx_studies_org_created (sql/0025) and a viewport query
-- idx_annotations_viewport (sql/0014) reading the index alone: an entry whose heap
-- page the visibility map marks all-visible needs no table read. A page loses the
-- mark on any write to it, and regains it only when (auto)vacuum passes. With the
-- defaults, autovacuum waits until a fifth of a table has changed — 24,000 study
-- rows at 120,000 studies — and the mirror rewrites a study's row as its series and
-- instances arrive. Measured on bench/search.py's 120,000 studies: right after
-- they were written, before any vacuum had marked their pages, the searches that
-- walk far took two to four times as long (a researcher's word and modality that
-- match nothing: p95 38 ms through the API, 16 ms once vacuumed); with 5 % of the
-- rows then updated at random, 1,009 of 4,590 pages stayed marked, and autovacuum
-- at the defaults would not come by before 24,000 rows had changed. At one percent
-- it came by 11 s later and marked 4,590 again; it reads only the pages not marked,
-- so the pass is short.
ALTER TABLE studies SET (autovacuum_vacuum_scale_factor = 0.01,
                         autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE annotations SET (autovacuum_vacuum_scale_factor = 0.01,
                             autovacuum_vacuum_insert_scale_factor = 0.01);
