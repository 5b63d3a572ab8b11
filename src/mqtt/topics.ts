/**
 * Perch's MQTT topic layout, in one place. Every module asks here for a topic instead of building
 * strings, so the layout documented in docs/mqtt.md has exactly one implementation.
 */

import { MAX_TOPIC_BYTES, topicNameProblem } from '../common/mqtt-strings.js';

export interface CameraTopics {
  /** JSON caption, QoS 1. */
  caption: string;
  /** Raw JPEG bytes, retained. */
  snapshot: string;
  /** Retained ON/OFF. */
  motion: string;
  /** JSON event (new|update|end). */
  event: string;
}

export interface PerchTopics {
  root: string;
  /** Retained online/offline; also the last will. */
  status: string;
  /** Retained JSON stats. */
  stats: string;
  /** JSON final transcript, QoS 1. */
  transcript: string;
  /** JSON partial transcript, QoS 0. */
  transcriptPartial: string;
  /** Retained ON/OFF: someone is speaking (voice activity). */
  speech: string;
  /** Retained sound level in dBFS, throttled. */
  soundLevel: string;
  /** Incoming push-to-talk: the next utterance is a question. */
  talk: string;
  /** Incoming question. */
  ask: string;
  /** Incoming cancel of a question. */
  askCancel: string;
  /** Incoming question as plain UTF-8 text (Home Assistant's text entity publishes raw text). */
  askText: string;
  /** Default reply topic for final answers, QoS 1. */
  answer: string;
  /** Token stream of answers, QoS 0. */
  answerStream: string;
  /** JSON errors, QoS 1. */
  errors: string;
  /** Retained ON/OFF state of the audio pipeline. */
  listening: string;
  /** ON/OFF command for the audio pipeline. */
  listeningSet: string;
  /** Retained ON/OFF state of the camera pipelines. */
  watching: string;
  /** ON/OFF command for the camera pipelines. */
  watchingSet: string;
  /** Each action the model took or was refused (QoS 1). */
  action: string;
  /** Yes or no to an action waiting for confirmation. */
  actionConfirm: string;
  /** Retained ON/OFF state of the allow-listed actions. */
  actions: string;
  /** ON/OFF command for the allow-listed actions. */
  actionsSet: string;
  camera(name: string): CameraTopics;
}

const cameraName = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** Refuses roots the config schema refuses too, so a library caller cannot build wildcard topics. */
export function assertTopicRoot(root: string): void {
  const problem = topicNameProblem(root);
  if (problem || root.startsWith('/') || root.endsWith('/')) {
    throw new Error(`invalid MQTT root topic ${JSON.stringify(root)}: ${problem ?? 'no leading or trailing "/"'}`);
  }
  if (Buffer.byteLength(root) > MAX_TOPIC_BYTES - 64) throw new Error('MQTT root topic too long');
}

export function topicsFor(root: string): PerchTopics {
  assertTopicRoot(root);
  const t = (suffix: string) => `${root}/${suffix}`;
  return {
    root,
    status: t('status'),
    stats: t('stats'),
    transcript: t('audio/transcript'),
    transcriptPartial: t('audio/transcript/partial'),
    speech: t('audio/speech'),
    soundLevel: t('audio/level'),
    talk: t('audio/talk'),
    ask: t('ask'),
    askCancel: t('ask/cancel'),
    askText: t('ask/text'),
    answer: t('answer'),
    answerStream: t('answer/stream'),
    errors: t('errors'),
    listening: t('listening'),
    listeningSet: t('listening/set'),
    watching: t('watching'),
    watchingSet: t('watching/set'),
    action: t('action'),
    actionConfirm: t('action/confirm'),
    actions: t('actions'),
    actionsSet: t('actions/set'),
    camera(name: string): CameraTopics {
      // Camera names come from the config schema's id rule; checking again keeps wildcards out of topics.
      if (!cameraName.test(name)) throw new Error(`invalid camera name ${JSON.stringify(name)}`);
      const c = (suffix: string) => `${root}/camera/${name}/${suffix}`;
      return { caption: c('caption'), snapshot: c('snapshot'), motion: c('motion'), event: c('event') };
    },
  };
}

/** The root used when mqtt.root_topic is not set. */
export function defaultRootTopic(deviceId: string): string {
  return `perch/${deviceId}`;
}

/** The client id used when mqtt.client_id is not set. */
export function defaultClientId(deviceId: string): string {
  return `perch-${deviceId}`;
}
