/**
 * What the camera pipelines (snapshots, motion, seeing) say over MQTT, in one place: per camera the retained
 * snapshot and motion state, motion events and captions, with their delivery (final results through the
 * outbox, live state only while connected).
 */
import type { MqttConnection } from './connection.js';
import { type CameraEventMessage, type CaptionMessage, encode, isoNow } from './messages.js';

const JSON_TYPE = 'application/json';

export class CameraPublisher {
  constructor(private readonly conn: MqttConnection) {}

  /** A frame as the camera's retained snapshot (live: dropped while disconnected). */
  snapshot(camera: string, jpeg: Buffer): void {
    void this.conn.publish(this.conn.topics.camera(camera).snapshot, jpeg, {
      qos: 0,
      retain: true,
      contentType: 'image/jpeg',
    });
  }

  /** Where the camera's snapshot is (captions name it). */
  snapshotTopic(camera: string): string {
    return this.conn.topics.camera(camera).snapshot;
  }

  motionState(camera: string, on: boolean): Promise<unknown> {
    return this.conn.publish(this.conn.topics.camera(camera).motion, on ? 'ON' : 'OFF', { qos: 1, retain: true });
  }

  /** A motion event (new, update, end), stamped now. */
  event(msg: CameraEventMessage): Promise<unknown> {
    return this.conn.publish(this.conn.topics.camera(msg.camera).event, encode({ ...msg, ts: isoNow() }), {
      final: true,
      qos: 1,
      priority: 'event',
      contentType: JSON_TYPE,
    });
  }

  /** A caption (or why there is none), with the JPEG it describes as the retained snapshot. */
  async caption(msg: CaptionMessage, jpeg: Buffer | null): Promise<void> {
    const t = this.conn.topics.camera(msg.camera);
    await Promise.all([
      jpeg
        ? this.conn.publish(t.snapshot, jpeg, {
            final: true,
            qos: 1,
            retain: true,
            priority: 'caption',
            contentType: 'image/jpeg',
          })
        : undefined,
      this.conn.publish(t.caption, encode(msg), { final: true, qos: 1, priority: 'caption', contentType: JSON_TYPE }),
    ]);
  }
}
