"""The one error the data layer raises for data that is not there yet."""


class DatasetNotPreparedError(ValueError):
    """A dataset is not prepared (or its manual download is missing).

    The message is always a single line that says what to run or where to put
    which file, e.g.::

      dataset 'pg19' is not prepared in /data/tfds; run `tfds build pg19
      --data_dir=/data/tfds` (needs access to gs://deepmind-gutenberg)

    It is raised with ``from None`` so that no traceback from inside TFDS is
    chained to it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
