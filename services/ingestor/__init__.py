"""Ingestor: camera / video / image folder -> JPEG -> Kafka ``frames`` (key camera_id), claim check for big frames."""
