"""`gcp-storage-emulator` with the one response header tensorstore needs that it leaves out.

  python tests/gcs_emulator.py start --port=PORT --default-bucket=bucket --in-memory

Real GCS answers a media download with the object's generation in `x-goog-generation`; the emulator
(2026.7.19) does not, and tensorstore's OCDBT driver under orbax, which reads its manifest back
with the generation it must match on the next write, then fails some saves with "Error writing
gs://.../ocdbt.process_0/manifest.ocdbt: Malformed StorageGeneration". This adds the header (and
`x-goog-metageneration`) and changes nothing else.
"""
import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # not found: the response is the emulator's 404 already
    return
  response["x-goog-generation"] = found["generation"]
  response["x-goog-metageneration"] = found["metageneration"]


# Before the server module builds its routing table from the handlers.
objects.download = download

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
