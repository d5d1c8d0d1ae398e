-- The uploads workers' rounds: overdue checks (assets verifying since long ago) and the purge of
-- old rejected assets read these without scanning every asset.
CREATE INDEX assets_verifying ON assets (updated_at) WHERE state = 'verifying';
CREATE INDEX assets_rejected ON assets (updated_at) WHERE state = 'rejected';
