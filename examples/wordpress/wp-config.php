<?php
/*
 * WordPress on Paracloud: its database and secrets come from the service's environment
 * (`env` in paracloud.toml), so that every instance of the PHP tier is configured alike.
 */
define('DB_NAME', getenv('WORDPRESS_DB_NAME'));
define('DB_USER', getenv('WORDPRESS_DB_USER'));
define('DB_PASSWORD', getenv('WORDPRESS_DB_PASSWORD'));
define('DB_HOST', getenv('WORDPRESS_DB_HOST'));
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');

/* The keys and salts sign the login cookies: derived from one secret, they are the same on every
 * instance, so that a user logged in on one is logged in on all. */
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY',
          'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $name) {
    define($name, hash('sha256', $name . "\0" . getenv('WORDPRESS_SECRET')));
}

$table_prefix = 'wp_';

/* The application's directory is read-only: no updates, plugin installs or theme edits from the
 * admin pages (deploy a new directory instead); uploads go to the volume at wp-content/uploads. */
define('DISALLOW_FILE_MODS', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
/* WP-Cron would have every page view call the site back over HTTP; a schedule runs it instead. */
define('DISABLE_WP_CRON', true);
define('WP_DEBUG', false);

if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
