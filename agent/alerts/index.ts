/** Alerts: health changes sent to signed webhooks and by e-mail (SMTP), with persisted state and daily reminders. */
export {
  type AlertEvent,
  AlertNotifier,
  type AlertOptions,
  type AlertPayload,
  type AlertResult,
  alertsFor,
  decide,
  installationTag,
} from './notifier';
export { SIGNATURE_HEADER, signAlert, verifyAlertSignature } from './signature';
export { formatMessage, type MailMessage, SmtpError, type SmtpOptions, sendMail } from './smtp';
export { ALERT_STATE_FILE, type AlertState, AlertStateStore, type AreaAlertState } from './state';
export { type Delivery, postWebhook } from './webhook';
