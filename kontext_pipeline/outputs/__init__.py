"""What a run leaves behind: exported images with provenance, the manifest, the HTML report,
its thumbnails and gallery, and the cleanup of stale exports."""
