"""Operations: partition upkeep, audit anchoring and export, retention.

Nothing here imports Orthanc or knows HTTP. Every function that depends on the
time takes a ``now`` so that tests move the clock instead of waiting for it.
"""
