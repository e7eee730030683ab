-- Under TimescaleDB, signal_segments chunks older than a week are compressed by
-- TimescaleDB's own policy. data_blob is already Atrium's lossless code, so what
-- this saves is the per-row overhead of millions of 10 s rows (tuple headers,
-- the primary-key index), segmented by recording and channel so that a window
-- read still touches only the rows of its recording. Native partitions have no
-- such policy: nothing in the routes depends on which one runs.

DO $$
BEGIN
    IF atrium_uses_timescaledb() THEN
        ALTER TABLE signal_segments SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'recording_id, channel_index',
            timescaledb.compress_orderby = 'segment_start'
        );
        PERFORM add_compression_policy('signal_segments', interval '7 days',
                                       if_not_exists => true);
    END IF;
END $$;
